//! Artifact tags on a second import (`--on-existing-artifact`): a vendor who
//! signs an image again appends a layer to its cosign `.sig` manifest, so
//! next month's bundle moves the `.sig` tag; that is applied (merge) when
//! every existing signature is kept, refused before any push when one would
//! be dropped, and image tags keep their own rule.

mod common;

use airlock::fixtures::{push_signature_layers, FixtureImage};
use airlock::import::{self, ImportOptions, OnExistingArtifact, OnExistingTag, Target};
use airlock::registry::Registries;
use airlock::Error;
use common::*;
use std::path::PathBuf;

fn opts(host: &str) -> ImportOptions {
    ImportOptions {
        target: Target::parse(host).unwrap(),
        on_existing_tag: OnExistingTag::Refuse,
        on_existing_artifact: OnExistingArtifact::default(),
        jobs: 4,
        policy: None,
        bundle_key: None,
        verify_first: false,
    }
}

/// The `.sig` tag of an image's index.
fn sig_tag(img: &FixtureImage) -> String {
    format!("{}.sig", img.digest.tag_stem())
}

struct Months {
    src: TestRegistry,
    dst: TestRegistry,
    images: Vec<FixtureImage>,
    work: tempfile::TempDir,
    /// Month one's `.sig` of `images[0]`, as the fixtures signed it.
    month1_sig: airlock::digest::Digest,
    month1: PathBuf,
}

/// The fixtures at the source, month one's bundle of the first `n` images
/// (the operator, whose index carries a one-layer `.sig`), imported into a
/// fresh destination.
async fn month_one(n: usize) -> Months {
    let (src, images) = seeded_source().await;
    let dst = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let s = client(&src, test_config()).await;
    let img = &images[0];
    let month1_sig = s
        .head_manifest(&img.repository, &sig_tag(img))
        .await
        .unwrap()
        .expect("the fixtures sign the operator index");
    // The helper's signing 0 is the fixtures' own signature, byte for byte.
    let again = push_signature_layers(&s, &img.repository, &img.digest, &[0])
        .await
        .unwrap();
    assert_eq!(again, (sig_tag(img), month1_sig.clone()));
    let month1 = export_to(&src, &images[..n], work.path(), "month1.tar.zst").await;
    let rep = import::import_file(&Registries::new(test_config()), &month1, &opts(&dst.host))
        .await
        .unwrap();
    assert!(
        rep.artifacts_updated.is_empty(),
        "{:?}",
        rep.artifacts_updated
    );
    Months {
        src,
        dst,
        images,
        work,
        month1_sig,
        month1,
    }
}

impl Months {
    /// Re-sign the operator index at the source with `signings` and export
    /// `images[..1]` again; returns the bundle and the new `.sig` digest.
    async fn month_two(&self, signings: &[u32], name: &str) -> (PathBuf, airlock::digest::Digest) {
        let s = client(&self.src, test_config()).await;
        let img = &self.images[0];
        let (_, digest) = push_signature_layers(&s, &img.repository, &img.digest, signings)
            .await
            .unwrap();
        assert_ne!(digest, self.month1_sig);
        let out = export_to(&self.src, &self.images[..1], self.work.path(), name).await;
        (out, digest)
    }

    async fn sig_at_destination(&self) -> Option<airlock::digest::Digest> {
        let d = client(&self.dst, test_config()).await;
        let img = &self.images[0];
        d.head_manifest(&img.repository, &sig_tag(img))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigned_image_merges_its_signature_tag_on_the_next_import() {
    let m = month_one(1).await;
    let (month2, sig2) = m.month_two(&[0, 1], "month2.tar.zst").await;
    let rep = import::import_file(&Registries::new(test_config()), &month2, &opts(&m.dst.host))
        .await
        .unwrap();
    let img = &m.images[0];
    assert_eq!(m.sig_at_destination().await, Some(sig2.clone()));
    // Only the index signature moved; the platform signatures are the same digests.
    assert_eq!(
        rep.artifacts_updated,
        vec![airlock::import::ArtifactUpdate {
            tag: format!("{}/{}:{}", m.dst.host, img.repository, sig_tag(img)),
            old: m.month1_sig.clone(),
            new: sig2.clone(),
            added: 1,
        }]
    );
    // The CLI says so too (the same two months into another path of the registry).
    let cli_to = format!("{}/cli", m.dst.host);
    airlock_ok(&["import", m.month1.to_str().unwrap(), "--to", &cli_to]);
    let out = airlock_ok(&["import", month2.to_str().unwrap(), "--to", &cli_to]);
    let line = format!(
        "artifact updated: {cli_to}/{}:{} {} -> {sig2} (1 added",
        img.repository,
        sig_tag(img),
        m.month1_sig
    );
    assert!(out.contains(&line), "{line} not in:\n{out}");
    // And the month-one bundle cannot take the tag back: it would drop a signature.
    let err = import::import_file(
        &Registries::new(test_config()),
        &m.month1,
        &opts(&m.dst.host),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::ArtifactConflicts(_)), "{err}");
    assert_eq!(m.sig_at_destination().await, Some(sig2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_update_that_drops_a_layer_is_refused_before_any_push() {
    let m = month_one(1).await;
    let img = &m.images[0];
    let s = client(&m.src, test_config()).await;
    let month1_layer = s
        .get_manifest(&img.repository, &m.month1_sig.to_string())
        .await
        .unwrap()
        .view()
        .unwrap()
        .layers[0]
        .digest
        .clone();
    let (dropping, sig3) = m.month_two(&[1], "dropping.tar.zst").await;
    let new_layer = s
        .get_manifest(&img.repository, &sig3.to_string())
        .await
        .unwrap()
        .view()
        .unwrap()
        .layers[0]
        .clone();

    let err = import::import_file(
        &Registries::new(test_config()),
        &dropping,
        &opts(&m.dst.host),
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    let Error::ArtifactConflicts(lines) = &err else {
        panic!("expected an artifact conflict, got: {text}");
    };
    assert_eq!(lines.len(), 1, "{text}");
    for needle in [
        format!("{}/{}:{}", m.dst.host, img.repository, sig_tag(img)),
        m.month1_sig.to_string(),
        sig3.to_string(),
        month1_layer.to_string(),
    ] {
        assert!(lines[0].contains(&needle), "{needle} not in: {text}");
    }
    assert!(text.contains("--on-existing-artifact=overwrite"), "{text}");
    // Nothing was pushed: the tag, the new manifest and its new layer are not there.
    let d = client(&m.dst, test_config()).await;
    assert_eq!(m.sig_at_destination().await, Some(m.month1_sig.clone()));
    assert_eq!(
        d.head_manifest(&img.repository, &sig3.to_string())
            .await
            .unwrap(),
        None
    );
    assert!(!d.blob_exists(&img.repository, &new_layer).await.unwrap());

    // refuse refuses, skip keeps the registry's, overwrite applies it.
    let (code, _, err) = airlock(&[
        "import",
        dropping.to_str().unwrap(),
        "--to",
        &m.dst.host,
        "--on-existing-artifact=refuse",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&sig_tag(img)), "{err}");
    let out = airlock_ok(&[
        "import",
        dropping.to_str().unwrap(),
        "--to",
        &m.dst.host,
        "--on-existing-artifact=skip",
    ]);
    assert!(
        out.contains(&format!(
            "left as it was: {}/{}:{}",
            m.dst.host,
            img.repository,
            sig_tag(img)
        )),
        "{out}"
    );
    assert_eq!(m.sig_at_destination().await, Some(m.month1_sig.clone()));
    airlock_ok(&[
        "import",
        dropping.to_str().unwrap(),
        "--to",
        &m.dst.host,
        "--on-existing-artifact=overwrite",
    ]);
    assert_eq!(m.sig_at_destination().await, Some(sig3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_tag_conflict_is_refused_even_when_artifacts_merge() {
    // Month one carries operator 1.0.0 and 1.1.0; the site then moves 1.0.0.
    let m = month_one(2).await;
    let img = &m.images[0];
    let d = client(&m.dst, test_config()).await;
    let other = d
        .get_manifest(&img.repository, &m.images[1].tag)
        .await
        .unwrap();
    d.put_manifest(&img.repository, &img.tag, &other.bytes, &other.media_type)
        .await
        .unwrap();
    let (month2, sig2) = m.month_two(&[0, 1], "month2.tar.zst").await;

    let err = import::import_file(&Registries::new(test_config()), &month2, &opts(&m.dst.host))
        .await
        .unwrap_err();
    let Error::TagConflicts(lines) = &err else {
        panic!("expected a tag conflict, got: {err}");
    };
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!(
            "{}:{} points to {}",
            img.repository, img.tag, other.digest
        )),
        "{err}"
    );
    assert_eq!(m.sig_at_destination().await, Some(m.month1_sig.clone()));

    // Image tags follow --on-existing-tag only: skipping it lets the signature merge.
    let mut skip = opts(&m.dst.host);
    skip.on_existing_tag = OnExistingTag::Skip;
    let rep = import::import_file(&Registries::new(test_config()), &month2, &skip)
        .await
        .unwrap();
    assert_eq!(
        rep.artifacts_updated.len(),
        1,
        "{:?}",
        rep.artifacts_updated
    );
    assert_eq!(m.sig_at_destination().await, Some(sig2));
    assert_eq!(
        d.head_manifest(&img.repository, &img.tag).await.unwrap(),
        Some(other.digest)
    );
}
