//! What `airlock serve` offers: the images of one or more bundles (or
//! volume sets), under the names the site expects, read straight from the
//! compressed files through their seek tables.
//!
//! Loading is the same walk as every command: a bundle source's graph, the
//! completeness check, the policy (images it refuses are not served), and,
//! with `--verify=full`, a copy of every blob to the null sink. Manifests are
//! held in memory (they are small and were checked when the graph was read);
//! blobs stay in the files.

use crate::bundle::{BundleSource, SeekableBundle};
use crate::copy::{copy, CopyOptions};
use crate::digest::{Digest, VerifyingReader};
use crate::error::{Error, Result};
use crate::graph::ArtifactKind;
use crate::oci::{Manifest, ManifestView};
use crate::progress::EventsHandle;
use crate::store::null::NullSink;
use crate::store::registry::Target;
use crate::store::{GraphRequest, Source};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How much of a bundle is checked before serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyMode {
    /// Every member read and hashed at start (and again as it is served).
    Full,
    /// The index, every manifest and the graph at start; each blob hashed as
    /// it is first served, the connection cut on a mismatch.
    Lazy,
}

/// One served repository.
#[derive(Debug, Default)]
pub struct Repo {
    pub tags: BTreeMap<String, Digest>,
    pub manifests: HashSet<Digest>,
    pub blobs: HashSet<Digest>,
    /// Subject digest → descriptors of the OCI 1.1 referrers about it.
    pub referrers: BTreeMap<Digest, Vec<serde_json::Value>>,
}

/// Where a blob's bytes are.
#[derive(Clone, Debug)]
struct BlobAt {
    bundle: usize,
    member: usize,
    size: u64,
}

pub struct Content {
    bundles: Vec<(String, Arc<SeekableBundle>)>,
    pub repos: BTreeMap<String, Repo>,
    pub manifests: HashMap<Digest, Manifest>,
    blobs: HashMap<Digest, BlobAt>,
    /// Blobs whose sha256 was checked whole (at start, or when first served).
    verified: Mutex<HashSet<Digest>>,
}

/// Every bundle named on the command line, grouped: the volumes of one
/// bundle belong together (they share one bundle index).
fn group_by_bundle(paths: &[PathBuf]) -> Result<Vec<Vec<PathBuf>>> {
    let files = crate::bundle::volumes::expand_paths(paths)?;
    let mut groups: Vec<(Digest, Vec<PathBuf>)> = Vec::new();
    for f in files {
        let (_, digest, _) = crate::inspect::read_head(&f)?;
        match groups.iter_mut().find(|(d, _)| *d == digest) {
            Some((_, g)) => g.push(f),
            None => groups.push((digest, vec![f])),
        }
    }
    Ok(groups.into_iter().map(|(_, g)| g).collect())
}

/// The descriptor of a referrer in a referrers-API answer.
fn referrer_descriptor(m: &Manifest) -> Option<(Digest, serde_json::Value)> {
    let view = ManifestView::parse(&m.bytes, Some(&m.media_type)).ok()?;
    let subject = view.subject.as_ref()?.digest.clone();
    let mut d = serde_json::json!({
        "mediaType": view.media_type,
        "digest": m.digest.to_string(),
        "size": m.bytes.len(),
    });
    if let Some(t) = view.effective_artifact_type() {
        d["artifactType"] = t.into();
    }
    if !view.annotations.is_empty() {
        d["annotations"] = serde_json::to_value(&view.annotations).unwrap_or_default();
    }
    Some((subject, d))
}

impl Content {
    /// Open, check and index every bundle. `template` maps source
    /// repositories to served names as `import --to` does.
    pub async fn load(
        paths: &[PathBuf],
        template: &str,
        policy: Option<&crate::trust::Policy>,
        mode: VerifyMode,
        events: &EventsHandle,
    ) -> Result<Content> {
        let target = Target {
            host: String::new(),
            template: template.to_string(),
            // Served names keep the selection-file target whole, as before.
            prefixed: false,
            tag_template: None,
        };
        let mut content = Content {
            bundles: Vec::new(),
            repos: BTreeMap::new(),
            manifests: HashMap::new(),
            blobs: HashMap::new(),
            verified: Mutex::new(HashSet::new()),
        };
        for group in group_by_bundle(paths)? {
            content
                .add_bundle(&group, &target, policy, mode, events)
                .await?;
        }
        content.check_complete()?;
        if content.repos.is_empty() {
            return Err(Error::Refused(
                "no image left to serve (every image was refused by the policy)".into(),
            ));
        }
        Ok(content)
    }

    async fn add_bundle(
        &mut self,
        files: &[PathBuf],
        target: &Target,
        policy: Option<&crate::trust::Policy>,
        mode: VerifyMode,
        events: &EventsHandle,
    ) -> Result<()> {
        let mut source = BundleSource::open_files(files)?;
        let name = source.name();
        let bundle = source.seekable().ok_or_else(|| {
            Error::Usage(format!(
                "{name} has no seek table (written by another tool, or truncated): serve needs random access; check it with airlock verify"
            ))
        })?;
        let graph = source
            .graph(GraphRequest {
                payloads: policy.is_some(),
            })
            .await?;
        let graphs = graph.walk(&name)?;
        let verdicts = policy.map(|p| crate::gate::evaluate(p, &graph));
        if mode == VerifyMode::Full {
            let mut null = NullSink::new(&name);
            copy(
                &mut source,
                &graph,
                &mut null,
                // The server starts once every blob is proven: the wait shows.
                &CopyOptions::new(4, "verify", events.clone()),
            )
            .await?;
            if let Ok(mut v) = self.verified.lock() {
                v.extend(graph.blobs.iter().map(|b| b.digest.clone()));
            }
        }
        let index = self.bundles.len();
        for (digest, member) in bundle.blob_members() {
            let size = bundle.index.members[member].size;
            self.blobs.entry(digest).or_insert(BlobAt {
                bundle: index,
                member,
                size,
            });
        }
        for m in graph.manifests.values() {
            self.manifests.insert(m.digest.clone(), m.clone());
        }
        for (n, g) in graphs.iter().enumerate() {
            if let Some(v) = verdicts.as_ref().and_then(|v| v.get(n)) {
                if v.blocks() {
                    events.0.note(&format!("not served (policy): {}", v.line()));
                    continue;
                }
            }
            let repo_name = target.repository(&g.entry.repository, g.entry.target.as_deref())?;
            let repo = self.repos.entry(repo_name.clone()).or_default();
            for m in g.manifests.iter().chain(g.artifacts.iter()) {
                repo.manifests.insert(m.digest.clone());
                if let Some(tag) = &m.tag {
                    if let Some(other) = repo.tags.insert(tag.clone(), m.digest.clone()) {
                        if other != m.digest {
                            return Err(Error::Refused(format!(
                                "{repo_name}:{tag} is {other} in one bundle and {} in {name}: serve them separately",
                                m.digest
                            )));
                        }
                    }
                }
            }
            repo.blobs.extend(g.blobs.iter().cloned());
            for a in &g.entry.artifacts {
                if a.kind != ArtifactKind::Referrer {
                    continue;
                }
                if let Some((subject, d)) =
                    self.manifests.get(&a.digest).and_then(referrer_descriptor)
                {
                    let list = repo.referrers.entry(subject).or_default();
                    if !list.contains(&d) {
                        list.push(d);
                    }
                }
            }
        }
        self.bundles.push((name, bundle));
        Ok(())
    }

    /// Every blob a served image needs must be in some bundle (an
    /// incremental bundle needs its base served beside it).
    fn check_complete(&self) -> Result<()> {
        for (name, repo) in &self.repos {
            if let Some(d) = repo.blobs.iter().find(|d| !self.blobs.contains_key(*d)) {
                return Err(Error::Usage(format!(
                    "{name} needs blob {d}, which no bundle given carries (an incremental bundle is served with its base bundle)"
                )));
            }
        }
        Ok(())
    }

    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.blobs.get(digest).map(|b| b.size)
    }

    pub fn is_verified(&self, digest: &Digest) -> bool {
        self.verified
            .lock()
            .map(|v| v.contains(digest))
            .unwrap_or(false)
    }

    pub fn mark_verified(&self, digest: &Digest) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert(digest.clone());
        }
    }

    /// The whole blob, hashed as it is read: the last read fails instead of
    /// reporting the end when the bytes are not the blob.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifyingReader<Box<dyn Read + Send>>> {
        let at = self.at(digest)?;
        Ok(self.bundles[at.bundle].1.open_member(at.member)?)
    }

    /// `len` bytes from `start`, unverified (the caller verified the blob whole first).
    pub fn open_range(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send>> {
        let at = self.at(digest)?;
        Ok(self.bundles[at.bundle]
            .1
            .open_range(at.member, start, len)?)
    }

    fn at(&self, digest: &Digest) -> Result<&BlobAt> {
        self.blobs
            .get(digest)
            .ok_or_else(|| Error::Refused(format!("blob {digest} is not served")))
    }

    pub fn bundle_names(&self) -> Vec<String> {
        self.bundles.iter().map(|(n, _)| n.clone()).collect()
    }
}
