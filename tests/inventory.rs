//! `airlock inventory` against a real registry: what it lists is exactly
//! what imports pushed (computed from the bundles, not from the registry),
//! the file round-trips, is signed like a bundle, and a file that is not an
//! inventory is refused.

mod common;

use airlock::digest::Digest;
use airlock::import::{self, ImportOptions, OnExistingTag, Target};
use airlock::inventory::{self, Inventory, InventoryBlob};
use airlock::registry::Registries;
use airlock::store::{GraphRequest, Source};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;

const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.key");
const PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/cosign-test.pub");
const OTHER_PUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys/other-test.pub");

type Set = BTreeSet<(Digest, u64)>;

/// Every manifest and every blob a bundle carries, with sizes: what an
/// import of it leaves at the registry.
async fn contents(bundle: &Path) -> (Set, Set) {
    let mut source = airlock::bundle::BundleSource::open_file(bundle).unwrap();
    let graph = source.graph(GraphRequest::default()).await.unwrap();
    let manifests = graph
        .manifests
        .values()
        .map(|m| (m.digest.clone(), m.bytes.len() as u64))
        .collect();
    let blobs = graph
        .blobs
        .iter()
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    (manifests, blobs)
}

fn set(list: &[InventoryBlob]) -> Set {
    list.iter().map(|b| (b.digest.clone(), b.size)).collect()
}

async fn import_to(bundle: &Path, to: &str) {
    let opts = ImportOptions {
        target: Target::parse(to).unwrap(),
        on_existing_tag: OnExistingTag::Refuse,
        on_existing_artifact: Default::default(),
        jobs: 4,
        policy: None,
        bundle_key: None,
        verify_first: false,
    };
    import::import_file(&Registries::new(test_config()), bundle, &opts)
        .await
        .unwrap();
}

fn sorted_unique(list: &[InventoryBlob]) -> bool {
    list.windows(2).all(|w| w[0].digest < w[1].digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lists_exactly_what_the_site_holds() {
    let (src, images) = seeded_source().await;
    let site = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    // The operator (a signed multi-arch index with signed platforms) and the
    // agent (keyless signature, attestation, an SBOM referrer behind a
    // fallback index) under site/; the gateway elsewhere.
    let operator = &images[0];
    let agent = images
        .iter()
        .find(|i| i.repository == "vendor/agent")
        .unwrap();
    let gateway = images
        .iter()
        .find(|i| i.repository == "vendor/gateway")
        .unwrap();
    let a = export_to(
        &src,
        &[operator.clone(), agent.clone()],
        work.path(),
        "a.tar.zst",
    )
    .await;
    let b = export_to(
        &src,
        std::slice::from_ref(gateway),
        work.path(),
        "b.tar.zst",
    )
    .await;
    import_to(&a, &format!("{}/site", site.host)).await;
    import_to(&b, &format!("{}/other", site.host)).await;
    let (a_manifests, a_blobs) = contents(&a).await;
    let (b_manifests, b_blobs) = contents(&b).await;
    assert!(
        a_manifests.len() > 10,
        "the expectation is not empty: {a_manifests:?}"
    );

    let reg = client(&site, test_config()).await;
    let events = airlock::progress::EventsHandle::default();
    let under = inventory::take(&reg, Some("site"), 3, &events)
        .await
        .unwrap();
    assert_eq!(under.registry, site.host);
    assert_eq!(under.prefix.as_deref(), Some("site"));
    assert_eq!(under.repositories, 2);
    assert_eq!(set(&under.manifests), a_manifests);
    assert_eq!(set(&under.blobs), a_blobs);
    assert!(sorted_unique(&under.manifests) && sorted_unique(&under.blobs));

    let all = inventory::take(&reg, None, 3, &events).await.unwrap();
    assert_eq!(all.repositories, 3);
    assert_eq!(all.prefix, None);
    assert_eq!(set(&all.manifests), &a_manifests | &b_manifests);
    assert_eq!(set(&all.blobs), &a_blobs | &b_blobs);
    let digests: BTreeSet<Digest> = a_manifests
        .iter()
        .chain(&a_blobs)
        .chain(&b_manifests)
        .chain(&b_blobs)
        .map(|(d, _)| d.clone())
        .collect();
    assert_eq!(
        all.blob_digests().into_iter().collect::<BTreeSet<_>>(),
        digests
    );
    // The catalog follows its Link pages, and stops at its limit.
    let mut repos = reg.catalog_in_pages(10, 1).await.unwrap();
    repos.sort();
    assert_eq!(
        repos,
        [
            "other/vendor/gateway",
            "site/vendor/agent",
            "site/vendor/operator"
        ]
    );
    let err = reg.catalog_in_pages(2, 1).await.unwrap_err().to_string();
    assert!(err.contains("more than 2 repositories"), "{err}");
    // A prefix is a path, not a string prefix: "sit" holds nothing.
    let none = inventory::take(&reg, Some("sit"), 3, &events)
        .await
        .unwrap();
    assert_eq!((none.repositories, none.blobs.len()), (0, 0));

    // The CLI writes the same inventory, signed; load reads it back.
    let file = work.path().join("site.json");
    let to = format!("{}/site", site.host);
    let out = airlock_ok(&[
        "inventory",
        "--registry",
        &to,
        "-o",
        file.to_str().unwrap(),
        "--sign-key",
        KEY,
    ]);
    assert!(out.contains("2 repositories"), "{out}");
    let bytes = std::fs::read(&file).unwrap();
    let (mut loaded, digest) = inventory::load(&file).unwrap();
    assert_eq!(digest, Digest::of(&bytes));
    assert_eq!(loaded.to_bytes(), bytes, "to_bytes is what was written");
    loaded.created = under.created.clone();
    assert_eq!(loaded, under);
    let key = inventory::verify_signature(&file, &bytes, &[OTHER_PUB.into(), PUB.into()]).unwrap();
    assert_eq!(key, Path::new(PUB));
    let err = inventory::verify_signature(&file, &bytes, &[OTHER_PUB.into()]).unwrap_err();
    assert_eq!(err.kind(), airlock::ErrorKind::Policy, "{err}");
    let mut edited = bytes.clone();
    edited.extend_from_slice(b" ");
    assert!(inventory::verify_signature(&file, &edited, &[PUB.into()]).is_err());

    // -o - prints it.
    let printed = airlock_ok(&["inventory", "--registry", &to, "-o", "-"]);
    let from_stdout: Inventory = serde_json::from_str(&printed).unwrap();
    assert_eq!(set(&from_stdout.blobs), a_blobs);
    assert_eq!(set(&from_stdout.manifests), a_manifests);
}

#[test]
fn a_file_that_is_not_an_inventory_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let good = Inventory {
        schema: inventory::SCHEMA,
        media_type: inventory::MEDIA_TYPE.into(),
        tool: "test".into(),
        created: "2026-01-01T00:00:00Z".into(),
        registry: "registry.example".into(),
        prefix: None,
        repositories: 1,
        blobs: vec![InventoryBlob {
            digest: Digest::of(b"blob"),
            size: 4,
        }],
        manifests: vec![],
    };
    let path = work.path().join("good.json");
    std::fs::write(&path, good.to_bytes()).unwrap();
    assert_eq!(inventory::load(&path).unwrap().0, good);

    let refused = |name: &str, bytes: Option<Vec<u8>>, needle: &str| {
        let p = work.path().join(name);
        match bytes {
            Some(b) => std::fs::write(&p, b).unwrap(),
            // Sparse: past the limit without writing it.
            None => std::fs::File::create(&p)
                .unwrap()
                .set_len(inventory::MAX_FILE_BYTES + 1)
                .unwrap(),
        }
        let err = inventory::load(&p).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(name),
            "{name}: the error names the file: {text}"
        );
        assert!(text.contains(needle), "{name}: {needle:?} not in: {text}");
        assert_eq!(err.kind(), airlock::ErrorKind::Integrity, "{text}");
    };
    let text = String::from_utf8(good.to_bytes()).unwrap();
    refused(
        "media-type.json",
        Some(
            text.replace(
                inventory::MEDIA_TYPE,
                "application/vnd.oci.image.index.v1+json",
            )
            .into_bytes(),
        ),
        "media type \"application/vnd.oci.image.index.v1+json\"",
    );
    refused("oversize.json", None, "limit");
    let hex = Digest::of(b"blob").hex();
    refused(
        "bad-digest.json",
        Some(text.replace(&hex, &hex[..60]).into_bytes()),
        "invalid digest",
    );
    refused(
        "sha512.json",
        Some(
            text.replace(&format!("sha256:{hex}"), "sha512:abc")
                .into_bytes(),
        ),
        "invalid digest",
    );
    refused(
        "not-json.json",
        Some(b"[1, 2".to_vec()),
        "not a valid airlock inventory",
    );
}
