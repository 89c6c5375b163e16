//! The `airlock` command line: argument parsing, credentials and output
//! over the library; one function per subcommand. Exit codes come from the
//! library's error kinds in one place ([`exit_code`]): 0 success, 1 error,
//! 2 usage, 3 integrity failure (corrupt or tampered bundle or layout),
//! 4 policy not met (signatures, bundle signature); an export stopped by
//! SIGINT or SIGTERM exits 128 + the signal's number (130, 143).
#![forbid(unsafe_code)]

use airlock::export::{self, ExportOptions};
use airlock::import::{self, ImportOptions, OnExistingArtifact, OnExistingTag, Target};
use airlock::progress::{self, human_bytes, StderrEvents};
use airlock::registry::{Credential, CredentialStore, Registries, RegistryConfig, RetryPolicy};
use airlock::store::endpoint::Endpoint;
use airlock::{inspect, selection, verify, ErrorKind};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// A line on stdout; a closed pipe (`airlock inspect --json B | head`)
/// becomes an error that `main` ends quietly on, never a panic. Reports
/// echo names from bundles and registries: control characters escaped.
macro_rules! outln {
    ($($t:tt)*) => {
        writeln!(std::io::stdout(), "{}", airlock::progress::printable_text(&format!($($t)*)))?
    };
}

const EXIT_USAGE: i32 = 2;
const EXIT_INTEGRITY: i32 = 3;
const EXIT_POLICY: i32 = 4;

/// `--on-existing-tag` (the library's type carries no CLI dependency).
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum TagPolicy {
    /// Stop before pushing anything (default).
    #[default]
    Refuse,
    /// Move the tag to the bundle's digest.
    Overwrite,
    /// Leave the existing tag as it is (content is still pushed by digest).
    Skip,
}

impl From<TagPolicy> for OnExistingTag {
    fn from(t: TagPolicy) -> OnExistingTag {
        match t {
            TagPolicy::Refuse => OnExistingTag::Refuse,
            TagPolicy::Overwrite => OnExistingTag::Overwrite,
            TagPolicy::Skip => OnExistingTag::Skip,
        }
    }
}

/// `--on-existing-artifact`: signature, attestation, SBOM and referrers-index tags.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum ArtifactPolicy {
    /// Apply the update when it keeps every layer (signature) of the registry's
    /// manifest and adds some; refuse, before anything is pushed, when it drops one.
    #[default]
    Merge,
    /// Move the tag to the bundle's digest.
    Overwrite,
    /// Leave the existing tag as it is.
    Skip,
    /// Stop before pushing anything.
    Refuse,
}

impl From<ArtifactPolicy> for OnExistingArtifact {
    fn from(t: ArtifactPolicy) -> OnExistingArtifact {
        match t {
            ArtifactPolicy::Merge => OnExistingArtifact::Merge,
            ArtifactPolicy::Overwrite => OnExistingArtifact::Overwrite,
            ArtifactPolicy::Skip => OnExistingArtifact::Skip,
            ArtifactPolicy::Refuse => OnExistingArtifact::Refuse,
        }
    }
}

#[derive(Args, Clone, Default)]
#[command(group(clap::ArgGroup::new("tlog_roots").args(["trusted_root", "rekor_keys"]).multiple(true)))]
struct TrustArgs {
    /// Public key (PEM) whose cosign signature every image must carry (repeatable).
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    /// Policy file (YAML): per repository pattern, required keys and attestations.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["keys", "certificate_identity", "certificate_identity_regexp"])]
    policy: Option<PathBuf>,
    /// Keyless signer identity (certificate SAN) every image must be signed by.
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "certificate_identity_regexp"
    )]
    certificate_identity: Option<String>,
    /// The same, as a regular expression (full match).
    #[arg(long, value_name = "REGEX")]
    certificate_identity_regexp: Option<String>,
    /// OIDC issuer of the keyless signer.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "certificate_oidc_issuer_regexp"
    )]
    certificate_oidc_issuer: Option<String>,
    /// The same, as a regular expression (full match).
    #[arg(long, value_name = "REGEX")]
    certificate_oidc_issuer_regexp: Option<String>,
    /// sigstore trusted_root.json (Fulcio CAs, Rekor and CT log keys) for keyless signatures
    /// and SETs; or sha256:<hex> to use the copy the bundle carries, if it has that digest.
    #[arg(long, value_name = "FILE|DIGEST", conflicts_with = "policy")]
    trusted_root: Option<String>,
    /// Rekor public key (PEM) to check the SETs of key-based signatures (repeatable).
    #[arg(long = "rekor-key", value_name = "PUB", conflicts_with = "policy")]
    rekor_keys: Vec<PathBuf>,
    /// CA certificates (PEM) of the site's private PKI: certificate signatures without
    /// Fulcio or Rekor, matched on --certificate-identity[-regexp] (email, URI or DNS SAN).
    #[arg(long, value_name = "PEM", conflicts_with = "policy")]
    ca_roots: Option<PathBuf>,
    /// Intermediate CA certificates (PEM) of that PKI.
    #[arg(long, value_name = "PEM", requires = "ca_roots")]
    ca_intermediates: Option<PathBuf>,
    /// Key-based signatures must carry a Rekor SET that verifies with a given Rekor key.
    #[arg(long, conflicts_with = "policy", requires = "tlog_roots")]
    require_tlog: bool,
}

impl TrustArgs {
    fn load(&self) -> Result<Option<airlock::trust::Policy>> {
        let flags = airlock::trust::PolicyFlags {
            keys: self.keys.clone(),
            policy: self.policy.clone(),
            certificate_identity: self.certificate_identity.clone(),
            certificate_identity_regexp: self.certificate_identity_regexp.clone(),
            certificate_oidc_issuer: self.certificate_oidc_issuer.clone(),
            certificate_oidc_issuer_regexp: self.certificate_oidc_issuer_regexp.clone(),
            trusted_root: self.trusted_root.clone(),
            rekor_keys: self.rekor_keys.clone(),
            ca_roots: self.ca_roots.clone(),
            ca_intermediates: self.ca_intermediates.clone(),
            require_tlog: self.require_tlog,
        };
        Ok(flags.load()?)
    }
}

#[derive(Args, Clone, Default)]
struct BundleKeyArgs {
    /// Require the bundle to be signed by this ECDSA P-256 public key (PEM).
    #[arg(long, value_name = "PUB")]
    bundle_key: Option<PathBuf>,
    /// The bundle signature (default: BUNDLE.sig).
    #[arg(long, value_name = "FILE", requires = "bundle_key")]
    bundle_signature: Option<PathBuf>,
}

impl BundleKeyArgs {
    /// The key and the signature text, read now so a missing file fails early.
    fn load(&self, bundle: &str) -> Result<Option<(PathBuf, String)>> {
        let Some(key) = &self.bundle_key else {
            return Ok(None);
        };
        let sig_path = match (&self.bundle_signature, bundle) {
            (Some(p), _) => p.clone(),
            (None, "-") => {
                bail!("--bundle-key with a bundle from stdin needs --bundle-signature FILE")
            }
            (None, b) => airlock::bundle::signature_path(std::path::Path::new(b)),
        };
        let sig = std::fs::read_to_string(&sig_path)
            .with_context(|| format!("reading the bundle signature {}", sig_path.display()))?;
        Ok(Some((key.clone(), sig.trim().to_string())))
    }
}

/// `airlock --version`: the version, the commit, and the bundle format it writes.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AIRLOCK_COMMIT"),
    ", bundle format 1)"
);

#[derive(Parser)]
#[command(
    name = "airlock",
    version = VERSION,
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 integrity failure (corrupt or tampered \
bundle or layout), 4 policy not met or bad bundle signature.\n\
File formats: airlock help selection | policy | format | json | threats",
    about = "Carry signed, multi-arch container images across an air gap in one verifiable bundle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Only errors on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Log every registry request on stderr (method, URL, status, time; never a secret).
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    verbose: bool,
}

#[derive(Args, Clone, Default)]
struct RegistryArgs {
    /// Extra CA certificate (PEM) to trust, on top of the system roots (repeatable).
    #[arg(long = "ca-file", value_name = "PEM")]
    ca_files: Vec<PathBuf>,
    /// Registry host reached over plain HTTP or TLS without verification (repeatable).
    #[arg(long = "insecure", value_name = "HOST")]
    insecure: Vec<String>,
    /// Username for the registry (with --password-stdin).
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password (or token) from stdin.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Attempts per request or blob before giving up.
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Upload blobs in chunks of this many bytes (default: one streamed PUT; a retry of a
    /// blob of 1 MiB or more continues in chunks from what the registry holds, this size at
    /// most).
    #[arg(long, value_name = "BYTES")]
    upload_chunk_size: Option<usize>,
    /// Concurrent blob transfers.
    #[arg(long, short, default_value_t = 6)]
    jobs: usize,
    /// Credentials file (containers auth.json format) instead of the standard ones.
    #[arg(long, value_name = "PATH", env = "REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// Credentials USER:PASSWORD for the registries of this command.
    #[arg(long, value_name = "USER:PASS", conflicts_with_all = ["username", "password_stdin"])]
    creds: Option<String>,
    /// false: accept any certificate (and plain HTTP) from every registry (as skopeo's flag).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
    /// A download or upload slower than this many bytes per second, on average over
    /// --low-speed-time, has stalled: it is retried (an upload continues where the registry
    /// stands), then an error naming the blob (as curl's --speed-limit).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    low_speed_limit: u64,
    /// The window of --low-speed-limit, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    low_speed_time: u64,
    /// How long a request waits for the registry's answer (a blob's body on its way up is
    /// timed by --low-speed-limit instead, whatever its size).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    request_timeout: u64,
    /// Certificates for every registry: *.crt CAs, NAME.cert + NAME.key client certificate
    /// (mTLS). /etc/containers/certs.d/HOST/ and /etc/docker/certs.d/HOST/ are read too.
    #[arg(long, value_name = "DIR")]
    cert_dir: Vec<PathBuf>,
}

impl RegistryArgs {
    fn config(&self, credential_hosts: &[String]) -> Result<RegistryConfig> {
        let mut credentials = CredentialStore::default();
        if let Some(f) = &self.authfile {
            credentials.files = Some(vec![f.clone()]);
        }
        if let Some(creds) = &self.creds {
            let Some((user, password)) = creds.split_once(':') else {
                bail!(airlock::Error::Usage(
                    "--creds USER:PASSWORD (or --username USER --password-stdin)".into()
                ));
            };
            for h in credential_hosts {
                credentials.explicit.insert(
                    h.clone(),
                    Credential::Basic {
                        username: user.to_string(),
                        password: password.to_string(),
                    },
                );
            }
        }
        if let Some(user) = &self.username {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            for h in credential_hosts {
                credentials.explicit.insert(
                    h.clone(),
                    Credential::Basic {
                        username: user.clone(),
                        password: password.clone(),
                    },
                );
            }
        }
        Ok(RegistryConfig {
            events: stderr_events(),
            credentials,
            ca_files: self.ca_files.clone(),
            insecure_hosts: self.insecure.clone(),
            retry: RetryPolicy {
                attempts: self.retries.max(1),
                ..RetryPolicy::default()
            },
            upload_chunk_size: self.upload_chunk_size,
            insecure_all: !self.tls_verify,
            low_speed: airlock::registry::LowSpeed {
                bytes_per_sec: self.low_speed_limit,
                window: std::time::Duration::from_secs(self.low_speed_time.max(1)),
            },
            request_timeout: Some(std::time::Duration::from_secs(self.request_timeout.max(1))),
            cert_dirs: self.cert_dir.clone(),
            certs_d: vec![
                PathBuf::from("/etc/containers/certs.d"),
                PathBuf::from("/etc/docker/certs.d"),
            ],
        })
    }
}

#[derive(Args)]
struct CopyArgs {
    /// [SRC] DST. SRC: docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:REF], B.tar.zst, or -
    /// (stdin); it may be left out when --file selects the images. DST:
    /// docker://HOST/REPO[:TAG] (exact), docker://HOST[/TEMPLATE] with {repo} or {name},
    /// oci:DIR[:REF], B.tar.zst, or - (stdout).
    #[arg(value_names = ["SRC", "DST"], num_args = 1..=2, required = true)]
    endpoints: Vec<String>,
    /// Selection file (YAML, as for export): the images to copy.
    #[arg(long = "file", short = 'f')]
    file: Option<PathBuf>,
    /// Keep only these platforms (os/arch[/variant], repeatable).
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// What to do when a tag or ref name at the destination points to another digest.
    #[arg(long, value_enum, default_value_t = TagPolicy::Refuse)]
    on_existing_tag: TagPolicy,
    /// What to do when a signature, attestation, SBOM or referrers-index tag at a
    /// registry destination points to another digest (image tags: --on-existing-tag).
    #[arg(long, value_enum, default_value_t = ArtifactPolicy::Merge)]
    on_existing_artifact: ArtifactPolicy,
    /// Fail if any image or platform manifest has no signature.
    #[arg(long)]
    require_signatures: bool,
    /// Replace an existing bundle file at the destination.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    trust: TrustArgs,
    #[command(flatten)]
    bundle_key: BundleKeyArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VerifyArg {
    Full,
    Lazy,
}

// Parsed once per run: the size of the biggest variant costs nothing, and
// boxing each would only add noise to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Pull images with their signatures into one bundle file.
    Export {
        /// Output bundle, e.g. mirror.tar.zst (a NAME.tar.zst.sha256 is written beside it);
        /// - writes the bundle to stdout (reports then go to stderr).
        #[arg(long, short, required_unless_present = "dry_run")]
        output: Option<PathBuf>,
        /// Selection file (YAML), see README; repeatable.
        #[arg(long = "file", short = 'f')]
        files: Vec<PathBuf>,
        /// Only the images of this set (or image handle) of the selection files; repeatable.
        #[arg(long = "set", value_name = "NAME", requires = "files")]
        sets: Vec<String>,
        /// Image references: [docker://]registry/repo:tag or @sha256:…, or oci:DIR[:REF].
        refs: Vec<String>,
        /// Keep only these platforms (os/arch[/variant], repeatable): for command-line
        /// references and for selection-file images without `platforms` of their own.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// Resolve, check and print what would be exported (images, tags, digests, platforms,
        /// sizes, signatures, policy verdict); no layer is downloaded, nothing is written.
        #[arg(long)]
        dry_run: bool,
        /// Write every resolved tag with its digest and platforms to this lock file (JSON).
        #[arg(long, value_name = "FILE", conflicts_with = "locked")]
        lock: Option<PathBuf>,
        /// Export exactly what this lock file lists; refuse if a tag moved since.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["files", "refs", "sets"])]
        locked: Option<PathBuf>,
        /// With --dry-run: show where `import --to HOST[/PREFIX|/TEMPLATE]` would put each image.
        #[arg(long, value_name = "HOST[/PATH]", requires = "dry_run")]
        to: Option<String>,
        /// Fail if any image or platform manifest has no signature.
        #[arg(long)]
        require_signatures: bool,
        /// zstd level (1-19).
        #[arg(long, default_value_t = 3)]
        level: i32,
        /// Compression threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        /// Download every blob into DIR/blobs/sha256/ first and keep it there across
        /// exports (never deleted by airlock); blobs there are reused. Without it, blobs
        /// stream straight into the bundle, and a stopped export's state directory
        /// OUTPUT.partial/ keeps the unfinished bundle for the rerun.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Sign the bundle index with this PKCS#8 PEM ECDSA P-256 key (writes B.tar.zst.sig).
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// Carry this sigstore trusted_root.json in the bundle; sites use it only by pinning
        /// its digest (--trusted-root sha256:...).
        #[arg(long, value_name = "FILE")]
        carry_trusted_root: Option<PathBuf>,
        /// Cut the bundle into volumes no larger than SIZE: NAME.001.tar.zst, NAME.002…
        /// SIZE: bytes, 4.7GB, 4G, 700MiB, or dvd (4.7 GB), dvd-dl, fat32 (4 GiB - 1), bd25, bd50, cd.
        #[arg(long, value_name = "SIZE", value_parser = airlock::bundle::volumes::parse_size)]
        volume_size: Option<u64>,
        /// Incremental: leave out every layer this earlier bundle carried (its file, one of
        /// its volumes, their directory, or its airlock-bundle.json). Repeatable.
        #[arg(long, value_name = "BUNDLE")]
        base: Vec<PathBuf>,
        /// Incremental: leave out every layer this inventory of the site's registry lists
        /// (written by `airlock inventory` on the disconnected side). Repeatable.
        #[arg(long, value_name = "FILE")]
        base_inventory: Vec<PathBuf>,
        /// The inventory must carry a signature (FILE.sig) by this public key.
        #[arg(long, value_name = "PUB", requires = "base_inventory")]
        inventory_key: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Verify a bundle and push it into a registry.
    Import {
        /// Bundle file, or - for stdin; or every volume of a bundle (any order, or their directory).
        #[arg(required = true)]
        bundle: Vec<String>,
        /// Target: HOST[/PREFIX] or HOST/TEMPLATE with {repo} and {name}
        /// (docker:// optional), or oci:DIR for an OCI layout directory.
        #[arg(long)]
        to: String,
        /// What to do when an image tag at the target points to another digest.
        #[arg(long, value_enum, default_value_t = TagPolicy::Refuse)]
        on_existing_tag: TagPolicy,
        /// Re-hash the whole bundle before the first push (two passes; a corrupt member
        /// then leaves nothing at all at the target, not even unreferenced blobs).
        #[arg(long)]
        verify_first: bool,
        /// Append one JSON line per import to this audit log (who, what, from which bundle,
        /// under which keys or policy, result).
        #[arg(long, value_name = "FILE", env = "AIRLOCK_AUDIT_LOG")]
        audit_log: Option<PathBuf>,
        /// What to do when a signature, attestation, SBOM or referrers-index tag at a
        /// registry target points to another digest (an OCI layout target follows
        /// --on-existing-tag for every name).
        #[arg(long, value_enum, default_value_t = ArtifactPolicy::Merge)]
        on_existing_artifact: ArtifactPolicy,
        /// The tag at the destination: {tag}, {version}, {date} (the bundle's creation date,
        /// YYYYMMDD), {digest12}; e.g. {tag}-mirrored. Wins over the selection file's tagTemplate.
        #[arg(long, value_name = "TEMPLATE")]
        tag_template: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        bundle_key: BundleKeyArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Copy images between any two of: registry (docker://HOST/REPO[:TAG]),
    /// OCI layout directory (oci:DIR[:REF]), bundle file, - (stdin/stdout).
    Copy(CopyArgs),
    /// List what a registry holds (every manifest and blob digest, with sizes) into a
    /// small file, for the next export on the connected side to leave out.
    Inventory {
        /// HOST[/PREFIX] (docker:// optional): the registry, and only the repositories
        /// at or under PREFIX.
        #[arg(long = "registry", value_name = "HOST[/PREFIX]")]
        registry_path: String,
        /// Output file, e.g. site.json (written whole or not at all); - for stdout.
        #[arg(long, short)]
        output: PathBuf,
        /// Sign the file with this PKCS#8 PEM ECDSA P-256 key (writes FILE.sig, as a
        /// bundle signature).
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Show what a bundle holds.
    Inspect {
        /// Bundle file, or one or more of its volumes.
        #[arg(required = true)]
        bundle: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle offline: every digest, the index, the graph.
    Verify {
        /// Bundle file, or - for stdin, or volumes of a bundle (any order, or their directory;
        /// some volumes alone are checked alone); or images where they now live:
        /// docker://HOST/REPO[:TAG|@DIGEST] or oci:DIR[:REF] (repeatable).
        #[arg(required = true)]
        bundle: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Append this verification's record to an audit log (as import --audit-log).
        #[arg(long, value_name = "FILE", env = "AIRLOCK_AUDIT_LOG")]
        audit_log: Option<PathBuf>,
        /// Also hash each bundle file whole and check it against its NAME.sha256: proves the
        /// compressed file byte for byte as exported. Every member, tar header and the index
        /// are verified either way; this second hash of every byte roughly doubles the work.
        /// Always done for a stream (-).
        #[arg(long)]
        file_hash: bool,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        bundle_key: BundleKeyArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Log in to a registry: check the credentials, then save them where skopeo and podman
    /// read them ($REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json).
    Login {
        /// Registry host[:port].
        host: String,
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password (or token) from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// The credentials file to write.
        #[arg(long, value_name = "PATH", env = "REGISTRY_AUTH_FILE")]
        authfile: Option<PathBuf>,
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
        tls_verify: bool,
        #[arg(long, value_name = "DIR")]
        cert_dir: Vec<PathBuf>,
        #[arg(long = "ca-file", value_name = "PEM")]
        ca_files: Vec<PathBuf>,
    },
    /// Remove a registry's saved credentials (or every one with --all).
    Logout {
        host: Option<String>,
        #[arg(long, conflicts_with = "host")]
        all: bool,
        #[arg(long, value_name = "PATH", env = "REGISTRY_AUTH_FILE")]
        authfile: Option<PathBuf>,
    },
    /// What changed between two bundles: images and tags added, removed or moved, bytes new.
    Diff {
        /// The earlier bundle (a file or one of its volumes).
        from: PathBuf,
        /// The later bundle.
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Shell completions: airlock completions bash > /etc/bash_completion.d/airlock
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages (roff), generated from this CLI: airlock man > airlock.1,
    /// airlock man import > airlock-import.1
    Man {
        /// A subcommand's own page.
        command: Option<String>,
    },
    /// Serve bundles (or volume sets) as a read-only OCI registry, straight from the files.
    Serve {
        /// Bundle files, volumes (any order) or directories holding them; several bundles at once.
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
        /// Address to listen on (default loopback only; 0.0.0.0:5000 for the network).
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: std::net::SocketAddr,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require basic auth against this htpasswd file (bcrypt: htpasswd -B).
        #[arg(long, value_name = "FILE")]
        htpasswd: Option<PathBuf>,
        /// Served names: PATH (a prefix) or a template with {repo} and {name}, as import --to.
        #[arg(long, value_name = "TEMPLATE")]
        prefix: Option<String>,
        /// full: every member hashed before serving; lazy: each blob hashed as it is served
        /// (the connection is cut on a mismatch, never completing a bad blob).
        #[arg(long, value_enum, default_value_t = VerifyArg::Full)]
        verify: VerifyArg,
        /// Request log as JSON lines on stderr.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Test fixtures: push the deterministic signed image set to a registry.
    #[cfg(feature = "fixtures")]
    #[command(hide = true)]
    Fixtures {
        /// HOST[/PREFIX], e.g. 127.0.0.1:5000/vendor
        #[arg(long, required_unless_present = "write_trusted_root")]
        to: Option<String>,
        /// Write the fixtures' test sigstore trusted_root.json here.
        #[arg(long, value_name = "FILE")]
        write_trusted_root: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        scale: usize,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// The audit record of an import or a verify: what was checked, with which
/// keys and policy (the outcome is filled in when the command ends).
fn audit_record(
    command: &str,
    bundle: &[String],
    bundle_key: &BundleKeyArgs,
    trust: &TrustArgs,
) -> airlock::audit::AuditRecord {
    let mut r = airlock::audit::AuditRecord::new(command);
    r.bundle = bundle.to_vec();
    r.bundle_key = bundle_key.bundle_key.clone();
    r.trust.keys = trust
        .keys
        .iter()
        .map(|k| airlock::audit::KeyFile::of(k))
        .collect();
    r.trust.policy = trust.policy.as_deref().map(airlock::audit::KeyFile::of);
    r
}

fn stderr_events() -> airlock::progress::EventsHandle {
    airlock::progress::EventsHandle(Arc::new(StderrEvents))
}

/// The subcommand running, for the JSON envelope (docs/json.md).
static COMMAND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Export { .. } => "export",
        Command::Import { .. } => "import",
        Command::Copy(_) => "copy",
        Command::Inventory { .. } => "inventory",
        Command::Inspect { .. } => "inspect",
        Command::Verify { .. } => "verify",
        Command::Login { .. } => "login",
        Command::Logout { .. } => "logout",
        Command::Diff { .. } => "diff",
        Command::Completions { .. } => "completions",
        Command::Man { .. } => "man",
        Command::Serve { .. } => "serve",
        #[cfg(feature = "fixtures")]
        Command::Fixtures { .. } => "fixtures",
    }
}

/// A `--json` document was printed: an error after it (a policy verdict
/// that fails the command) is then told by the exit code and stderr, not
/// by a second document on stdout.
static JSON_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Every `--json` document: `"schema": 1`, `"command"`, and `"policy"`
/// always present (`null` when no keys or policy were given) on the
/// commands that judge images.
fn json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut value = serde_json::to_value(v)?;
    if let Some(obj) = value.as_object_mut() {
        let command = COMMAND.get().copied().unwrap_or("airlock");
        obj.insert("schema".into(), 1.into());
        obj.insert("command".into(), command.into());
        if matches!(command, "export" | "import" | "verify" | "copy") && !obj.contains_key("policy")
        {
            obj.insert("policy".into(), serde_json::Value::Null);
        }
    }
    // JSON escapes control characters itself (and must stay valid JSON).
    Ok(serde_json::to_string_pretty(&value)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    writeln!(std::io::stdout(), "{}", json_text(v)?)?;
    Ok(())
}

/// An error as the `--json` document on stdout (docs/json.md), so a script
/// reading stdout always gets JSON.
fn print_json_error(e: &anyhow::Error, code: i32) {
    let kind = match code {
        2 => "usage",
        3 => "integrity",
        4 => "policy",
        _ => "error",
    };
    let mut doc = serde_json::json!({
        "error": {"message": airlock::error::chain_text(e.chain()), "kind": kind, "exitCode": code},
    });
    if COMMAND.get() == Some(&"verify") {
        doc["verified"] = false.into();
    }
    if let Ok(text) = json_text(&doc) {
        let _ = writeln!(std::io::stdout(), "{text}");
    }
}

/// Reports go to stdout, unless stdout carries the bundle itself.
fn report_out(bundle_on_stdout: bool) -> Box<dyn Write> {
    if bundle_on_stdout {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    }
}

async fn run(cli: Cli) -> Result<()> {
    let _ = COMMAND.set(command_name(&cli.command));
    match cli.command {
        Command::Export {
            output,
            files,
            sets,
            refs,
            platforms,
            dry_run,
            lock,
            locked,
            to,
            require_signatures,
            level,
            threads,
            force,
            cache_dir,
            sign_key,
            carry_trusted_root,
            volume_size,
            base,
            base_inventory,
            inventory_key,
            json,
            trust,
            registry,
        } => {
            let output = output.unwrap_or_else(|| PathBuf::from("-"));
            if volume_size.is_some() && output.as_os_str() == "-" && !dry_run {
                bail!(airlock::Error::Usage(
                    "--volume-size needs an output file (-o NAME.tar.zst), not stdout".into()
                ));
            }
            let mut opts = ExportOptions::new(&output);
            opts.lock = lock;
            opts.level = level;
            if let Some(t) = threads {
                opts.threads = t;
            }
            opts.require_signatures = require_signatures;
            opts.force = force;
            opts.cache_dir = cache_dir;
            opts.sign_key = sign_key;
            opts.carry_trusted_root = carry_trusted_root;
            opts.volume_size = volume_size;
            for b in &base {
                opts.base.add_bundle(std::slice::from_ref(b))?;
            }
            for i in &base_inventory {
                opts.base.add_inventory(i, &inventory_key)?;
            }
            opts.policy = trust.load()?.map(Arc::new);
            let sel = match &locked {
                Some(path) => {
                    if !platforms.is_empty() {
                        bail!(airlock::Error::Usage(
                            "--locked exports the platforms the lock file lists; leave out --platform"
                                .into()
                        ));
                    }
                    airlock::lock::LockFile::read(path)?.selections(path)?
                }
                None => selection_of(&files, &sets, &refs, &platforms)?,
            };
            if dry_run {
                return plan_cmd(sel, opts, to.as_deref(), json, registry).await;
            }
            export_cmd(sel, opts, json, registry).await
        }
        Command::Import {
            bundle,
            to,
            on_existing_tag,
            verify_first,
            audit_log,
            on_existing_artifact,
            tag_template,
            json,
            trust,
            bundle_key,
            registry,
        } => {
            let mut audit = audit_log.as_ref().map(|_| {
                let mut r = audit_record("import", &bundle, &bundle_key, &trust);
                r.destination = Some(to.clone());
                r
            });
            let result = import_cmd(
                &bundle,
                &to,
                tag_template,
                (
                    on_existing_tag.into(),
                    on_existing_artifact.into(),
                    verify_first,
                ),
                json,
                trust,
                bundle_key,
                registry,
            )
            .await;
            if let (Some(log), Some(record)) = (audit_log, audit.as_mut()) {
                match &result {
                    Ok(report) => audit_import(record, report),
                    Err(e) => record.failed(&airlock::error::chain_text(e.chain())),
                }
                record
                    .append(&log)
                    .with_context(|| format!("appending to the audit log {}", log.display()))?;
            }
            result.map(|_| ())
        }
        Command::Copy(args) => copy_cmd(args).await,
        Command::Diff { from, to, json } => {
            let (ia, da) = inspect::read_index(&from).map_err(airlock::Error::from)?;
            let (ib, db) = inspect::read_index(&to).map_err(airlock::Error::from)?;
            let d = airlock::diff::diff((&ia, &da), (&ib, &db));
            if json {
                print_json(&d)
            } else {
                write!(std::io::stdout(), "{}", airlock::diff::render(&d))?;
                Ok(())
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "airlock", &mut out);
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
        Command::Man { command } => {
            let cli = <Cli as clap::CommandFactory>::command();
            let page = match &command {
                None => cli,
                Some(name) => {
                    let Some(sub) = cli.find_subcommand(name).cloned() else {
                        bail!(airlock::Error::Usage(format!("no subcommand {name:?}")));
                    };
                    let title: &'static str = Box::leak(format!("airlock-{name}").into_boxed_str());
                    sub.name(title)
                }
            };
            let mut out = Vec::new();
            clap_mangen::Man::new(page).render(&mut out)?;
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
        Command::Login {
            host,
            username,
            password_stdin,
            authfile,
            tls_verify,
            cert_dir,
            ca_files,
        } => {
            login_cmd(
                &host,
                &username,
                password_stdin,
                authfile,
                RegistryArgs {
                    tls_verify,
                    cert_dir,
                    ca_files,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Logout {
            host,
            all,
            authfile,
        } => logout_cmd(host.as_deref(), all, authfile),
        Command::Serve {
            bundles,
            listen,
            tls_cert,
            tls_key,
            htpasswd,
            prefix,
            verify,
            json,
            trust,
        } => {
            let tls = tls_cert.zip(tls_key);
            let opts = airlock::serve::ServeOptions {
                listen,
                tls,
                htpasswd,
                log: Some(request_logger(json)),
            };
            serve_cmd(&bundles, prefix.as_deref(), verify, trust, opts).await
        }
        Command::Inventory {
            registry_path,
            output,
            sign_key,
            registry,
        } => inventory_cmd(&registry_path, &output, sign_key, registry).await,
        Command::Inspect { bundle, json } => inspect_cmd(&bundle, json),
        Command::Verify {
            bundle,
            json,
            audit_log,
            file_hash,
            trust,
            bundle_key,
            registry,
        } => {
            let mut audit = audit_log
                .as_ref()
                .map(|_| audit_record("verify", &bundle, &bundle_key, &trust));
            let at_rest = bundle
                .iter()
                .all(|b| b.starts_with("docker://") || b.starts_with("oci:"));
            let any_at_rest = bundle
                .iter()
                .any(|b| b.starts_with("docker://") || b.starts_with("oci:"));
            match bundle.as_slice() {
                refs if at_rest => verify_images_cmd(refs, json, trust, registry).await,
                files if !any_at_rest && (files.len() == 1 || !files.iter().any(|f| f == "-")) => {
                    let file_hash = if file_hash {
                        verify::FileHash::Check
                    } else {
                        verify::FileHash::Skip
                    };
                    let result =
                        verify_cmd(files, json, file_hash, trust, bundle_key, audit.as_mut()).await;
                    if let (Some(log), Some(record)) = (audit_log, audit.as_mut()) {
                        if let Err(e) = &result {
                            record.failed(&airlock::error::chain_text(e.chain()));
                        }
                        record.append(&log).with_context(|| {
                            format!("appending to the audit log {}", log.display())
                        })?;
                    }
                    result
                }
                _ => bail!(airlock::Error::Usage(
                    "verify takes one bundle (file or -) or its volumes, or image references (docker://…, oci:…)"
                        .into()
                )),
            }
        }
        #[cfg(feature = "fixtures")]
        Command::Fixtures {
            to,
            write_trusted_root,
            scale,
            registry,
        } => fixtures_cmd(to, write_trusted_root, scale, registry).await,
    }
}

fn selection_of(
    files: &[PathBuf],
    sets: &[String],
    refs: &[String],
    platforms: &[String],
) -> Result<Vec<selection::ImageSelection>> {
    let mut sel = Vec::new();
    if !files.is_empty() {
        let mut from_files = selection::load_files(files, sets)?;
        if !platforms.is_empty() {
            for s in from_files.iter_mut().filter(|s| s.platforms.is_empty()) {
                s.platforms = platforms
                    .iter()
                    .map(|p| {
                        airlock::oci::Platform::parse(p).ok_or_else(|| {
                            airlock::Error::Usage(format!(
                                "--platform {p:?} is not os/arch[/variant]"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
        }
        sel.extend(from_files);
    }
    sel.extend(selection::from_refs(refs, platforms)?);
    if sel.is_empty() {
        bail!(airlock::Error::Selection(
            "nothing to export: give image references or --file".into()
        ));
    }
    Ok(sel)
}

/// `export --dry-run`: the plan, then the error the export would hit.
async fn plan_cmd(
    sel: Vec<selection::ImageSelection>,
    mut opts: ExportOptions,
    to: Option<&str>,
    json: bool,
    registry: RegistryArgs,
) -> Result<()> {
    let hosts: Vec<String> = sel.iter().map(|s| s.repo.registry.clone()).collect();
    let registries = Registries::new(registry.config(&hosts)?);
    opts.jobs = registry.jobs;
    let target = to
        .map(|t| Target::parse(t.strip_prefix("docker://").unwrap_or(t)))
        .transpose()?;
    let (plan, failure) = export::plan(&registries, &sel, &opts, target.as_ref()).await?;
    if json {
        print_json(&plan)?;
    } else {
        print_plan(&plan)?;
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn print_plan(plan: &export::Plan) -> Result<()> {
    for w in &plan.warnings {
        outln!("warning: {w}");
    }
    for p in &plan.images {
        let img = &p.entry;
        outln!("{}", img.source);
        outln!(
            "  digest:    {} ({}, {})",
            img.digest,
            img.media_type,
            human_bytes(img.total_size)
        );
        if img.source_digest != img.digest {
            outln!("  original:  {} (platform-filtered)", img.source_digest);
        }
        if let Some(i) = &img.platform_of {
            outln!("  single platform out of the vendor index {i} (its index signature will not verify against it)");
        }
        for pl in &img.platforms {
            outln!(
                "  platform:  {:<14} {} ({})",
                pl.platform.as_deref().unwrap_or("-"),
                pl.digest,
                human_bytes(pl.size)
            );
        }
        outln!(
            "  signed:    {} signature(s), {} attestation(s){}",
            p.signatures,
            p.attestations,
            if p.unsigned.is_empty() {
                String::new()
            } else {
                format!("; UNSIGNED: {}", p.unsigned.join(", "))
            }
        );
        if let Some(d) = &p.destination {
            outln!("  import to: {d}");
        }
    }
    if let Some(verdicts) = &plan.policy {
        for v in verdicts {
            outln!("{}", v.line());
        }
    }
    outln!(
        "plan: {} images, {} manifests, {} blobs ({}); bundle content {}{}",
        plan.images.len(),
        plan.manifests,
        plan.blobs,
        human_bytes(plan.blob_bytes),
        human_bytes(plan.total_bytes),
        if plan.external_blobs > 0 {
            format!(
                "; {} layers ({}) left out, the base has them",
                plan.external_blobs,
                human_bytes(plan.external_bytes)
            )
        } else {
            String::new()
        }
    );
    match &plan.would_fail {
        Some(why) => outln!("the export would fail: {why}"),
        None => outln!("dry run: nothing downloaded but manifests and signatures, nothing written"),
    }
    Ok(())
}

async fn export_cmd(
    sel: Vec<selection::ImageSelection>,
    mut opts: ExportOptions,
    json: bool,
    registry: RegistryArgs,
) -> Result<()> {
    let hosts: Vec<String> = sel.iter().map(|s| s.repo.registry.clone()).collect();
    let registries = Registries::new(registry.config(&hosts)?);
    opts.jobs = registry.jobs;
    opts.events = Arc::new(StderrEvents);
    let to_stdout = opts.output.as_os_str() == "-";
    let report = {
        let stop = interrupted()?;
        let mut running = Box::pin(export::export(&registries, &sel, &opts));
        let outcome = tokio::select! {
            r = &mut running => Ok(r),
            signal = stop => Err(signal),
        };
        // Dropping the export removes its temp output and downloads in
        // flight, and keeps the verified blobs: before the message, which
        // says what is left.
        drop(running);
        match outcome {
            Ok(r) => r?,
            Err(signal) => return Err(Interrupted::of_export(signal, &opts).into()),
        }
    };
    let mut out = report_out(to_stdout);
    if json {
        writeln!(out, "{}", json_text(&report)?)?;
        return Ok(());
    }
    for img in &report.images {
        writeln!(
            out,
            "{}  {}  [{}]  {} artifacts",
            img.source,
            img.digest,
            img.platforms.join(", "),
            img.artifacts
        )?;
    }
    writeln!(
        out,
        "wrote {} ({}, {} images, {} manifests, {} blobs, {} of blobs) in {:.1}s ({}/s)",
        report.bundle,
        human_bytes(report.file_size),
        report.images.len(),
        report.manifests,
        report.blobs,
        human_bytes(report.blob_bytes),
        report.seconds,
        human_bytes((report.blob_bytes as f64 / report.seconds.max(0.001)) as u64),
    )?;
    if report.external_blobs > 0 {
        writeln!(
            out,
            "incremental: {} layers ({}) left out, the site has them from the base",
            report.external_blobs,
            human_bytes(report.external_bytes)
        )?;
    }
    writeln!(out, "bundle digest: {}", report.bundle_digest)?;
    if let Some(s) = &report.signature {
        writeln!(out, "bundle signature: {s}")?;
    }
    for v in &report.volumes {
        writeln!(
            out,
            "volume {}  {}  sha256 {}  (also in its .sha256)",
            v.path,
            human_bytes(v.size),
            v.sha256
        )?;
    }
    if !report.volumes.is_empty() {
    } else if to_stdout {
        writeln!(out, "file sha256:   {}", report.file_sha256)?;
    } else {
        writeln!(
            out,
            "file sha256:   {}  (also in {}.sha256)",
            report.file_sha256, report.bundle
        )?;
    }
    Ok(())
}

fn print_import(report: &import::ImportReport, json: bool) -> Result<()> {
    if json {
        return print_json(report);
    }
    for img in &report.images {
        outln!(
            "{} -> {}  {}  ({} artifacts)",
            img.source,
            img.target,
            img.digest,
            img.artifacts
        );
    }
    for t in &report.tags_skipped {
        outln!("left as it was: {t}");
    }
    for u in &report.artifacts_updated {
        outln!(
            "artifact updated: {} {} -> {} ({} added, every existing one kept)",
            u.tag,
            u.old,
            u.new,
            u.added
        );
    }
    outln!(
        "imported {} images ({} mode): {} blobs uploaded ({}), {} mounted, {} already present ({} skipped); {} manifests pushed, {} present; {} tags; {:.1}s",
        report.images.len(),
        report.mode,
        report.blobs_uploaded,
        human_bytes(report.bytes_sent),
        report.blobs_mounted,
        report.blobs_present,
        human_bytes(report.bytes_skipped),
        report.manifests_pushed,
        report.manifests_present,
        report.tags_set,
        report.seconds
    );
    if let Some(d) = &report.bundle_digest {
        outln!("bundle digest: {d}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn import_cmd(
    bundle: &[String],
    to: &str,
    tag_template: Option<String>,
    (on_existing_tag, on_existing_artifact, verify_first): (
        OnExistingTag,
        OnExistingArtifact,
        bool,
    ),
    json: bool,
    trust: TrustArgs,
    bundle_key: BundleKeyArgs,
    registry: RegistryArgs,
) -> Result<import::ImportReport> {
    let policy = trust.load()?.map(Arc::new);
    let stdin = bundle.len() == 1 && bundle[0] == "-";
    if stdin && registry.password_stdin {
        bail!(airlock::Error::Usage(
            "import - reads the bundle from stdin, so the password cannot come from stdin too: use --creds, --authfile or airlock login".into()
        ));
    }
    if !stdin && bundle.iter().any(|b| b == "-") {
        bail!(airlock::Error::Usage(
            "import reads a bundle from stdin (-) or from files, not both".into()
        ));
    }
    let files = if stdin {
        Vec::new()
    } else {
        let paths: Vec<PathBuf> = bundle.iter().map(PathBuf::from).collect();
        airlock::bundle::volumes::expand_paths(&paths).map_err(airlock::Error::from)?
    };
    let first = files
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    let bundle_key = bundle_key.load(&first)?;
    let layout_dir = to.strip_prefix("oci:").map(PathBuf::from);
    let mut target = match &layout_dir {
        Some(_) => Target {
            host: String::new(),
            template: "{repo}".into(),
            prefixed: false,
            tag_template: None,
        },
        None => Target::parse(to.strip_prefix("docker://").unwrap_or(to))?,
    };
    target.tag_template = tag_template;
    let registries = Registries::new(registry.config(std::slice::from_ref(&target.host))?);
    let opts = ImportOptions {
        target: target.clone(),
        on_existing_tag,
        on_existing_artifact,
        jobs: registry.jobs,
        policy,
        bundle_key,
        verify_first,
    };
    let mut registry_sink;
    let mut dir_sink;
    let sink: &mut dyn airlock::store::Sink = match &layout_dir {
        Some(dir) => {
            dir_sink = airlock::store::dir::DirSink::new(dir, on_existing_tag);
            &mut dir_sink
        }
        None => {
            registry_sink =
                airlock::store::registry::RegistrySink::new(&registries, target, on_existing_tag)
                    .with_on_existing_artifact(on_existing_artifact)
                    .with_jobs(registry.jobs);
            &mut registry_sink
        }
    };
    let report = if stdin {
        let source =
            airlock::bundle::BundleSource::stream_unhashed(Box::new(std::io::stdin()), "stdin");
        import::import_into(source, sink, &opts, &stderr_events()).await?
    } else {
        import::import_files_into(&files, sink, &opts, &stderr_events()).await?
    };
    print_import(&report, json)?;
    Ok(report)
}

/// What an import did, in its audit record.
fn audit_import(record: &mut airlock::audit::AuditRecord, report: &import::ImportReport) {
    record.bundle_digest = report.bundle_digest.clone();
    record.images = report
        .images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            airlock::audit::AuditImage::new(
                &img.source,
                &img.target,
                &img.digest,
                report.policy.as_ref().and_then(|v| v.get(i)),
                "not checked (no keys or policy given)",
            )
        })
        .collect();
    record.counts = serde_json::json!({
        "blobsUploaded": report.blobs_uploaded,
        "blobsMounted": report.blobs_mounted,
        "blobsPresent": report.blobs_present,
        "bytesSent": report.bytes_sent,
        "manifestsPushed": report.manifests_pushed,
        "tagsSet": report.tags_set,
    });
}

async fn copy_cmd(args: CopyArgs) -> Result<()> {
    let (source, destination) = match (args.endpoints.as_slice(), &args.file) {
        ([src, dst], _) => (Some(Endpoint::parse(src)?), Endpoint::parse(dst)?),
        ([dst], Some(_)) => (None, Endpoint::parse(dst)?),
        _ => bail!(airlock::Error::Usage(
            "airlock copy needs SRC and DST (or --file FILE and DST)".into()
        )),
    };
    let selection = match &args.file {
        Some(f) => selection::load_file(f)?,
        None => vec![],
    };
    let policy = args.trust.load()?.map(Arc::new);
    let bundle_key = match &source {
        Some(Endpoint::Bundle(p)) => args.bundle_key.load(&p.display().to_string())?,
        Some(Endpoint::Stdio) => args.bundle_key.load("-")?,
        _ => None,
    };
    let mut hosts: Vec<String> = selection.iter().map(|s| s.repo.registry.clone()).collect();
    for e in [source.as_ref(), Some(&destination)].into_iter().flatten() {
        if let Endpoint::Registry(r) = e {
            hosts.push(r.split('/').next().unwrap_or(r).to_string());
        }
    }
    let registries = Registries::new(args.registry.config(&hosts)?);
    let opts = airlock::transfer::TransferOptions {
        selection,
        platforms: args.platforms.clone(),
        on_existing_tag: args.on_existing_tag.into(),
        on_existing_artifact: args.on_existing_artifact.into(),
        require_signatures: args.require_signatures,
        force: args.force,
        jobs: args.registry.jobs,
        policy,
        bundle_key,
    };
    let to_stdout = destination == Endpoint::Stdio;
    let report = airlock::transfer::transfer(
        &registries,
        source.as_ref(),
        &destination,
        &opts,
        &stderr_events(),
    )
    .await?;
    let mut out = report_out(to_stdout);
    if args.json {
        writeln!(out, "{}", json_text(&report)?)?;
        return Ok(());
    }
    for (img, dest) in report.images.iter().zip(&report.destinations) {
        writeln!(out, "{} -> {dest}  {}", img.source, img.digest)?;
    }
    for u in &report.copy.sink.artifacts_updated {
        writeln!(
            out,
            "artifact updated: {} {} -> {} ({} added, every existing one kept)",
            u.tag, u.old, u.new, u.added
        )?;
    }
    writeln!(
        out,
        "copied {} images: {} blobs stored ({}), {} mounted, {} already there; {} manifests written, {} present; {:.1}s",
        report.images.len(),
        report.copy.blobs_stored,
        human_bytes(report.copy.bytes_sent),
        report.copy.blobs_mounted,
        report.copy.blobs_present,
        report.copy.sink.manifests_written,
        report.copy.sink.manifests_present,
        report.seconds
    )?;
    if let Some(f) = &report.copy.sink.file {
        writeln!(
            out,
            "wrote {} ({}), file sha256 {}",
            f.path,
            human_bytes(f.size),
            f.sha256
        )?;
    }
    Ok(())
}

fn auth_file(authfile: Option<PathBuf>) -> Result<PathBuf> {
    authfile
        .or_else(CredentialStore::default_auth_file)
        .ok_or_else(|| {
            anyhow::anyhow!(airlock::Error::Usage(
                "no credentials file: give --authfile PATH (or set REGISTRY_AUTH_FILE)".into()
            ))
        })
}

async fn login_cmd(
    host: &str,
    username: &str,
    password_stdin: bool,
    authfile: Option<PathBuf>,
    mut registry: RegistryArgs,
) -> Result<()> {
    let host = host.trim_start_matches("docker://").trim_end_matches('/');
    if !password_stdin {
        bail!(airlock::Error::Usage(
            "give the password on stdin: --password-stdin (it is never taken from the command line)".into()
        ));
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    let file = auth_file(authfile)?;
    registry.creds = Some(format!("{username}:{password}"));
    registry.retries = 1;
    let config = registry.config(&[host.to_string()])?;
    let reg = Registries::new(config).get(host).await?;
    reg.check_login().await?;
    airlock::registry::auth::save_login(&file, host, Some((username, &password)))?;
    outln!("Login Succeeded: {host} (saved in {})", file.display());
    Ok(())
}

fn logout_cmd(host: Option<&str>, all: bool, authfile: Option<PathBuf>) -> Result<()> {
    let file = auth_file(authfile)?;
    if all {
        if file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        }
        outln!("Removed every login in {}", file.display());
        return Ok(());
    }
    let Some(host) = host else {
        bail!(airlock::Error::Usage(
            "airlock logout HOST, or --all".into()
        ));
    };
    if airlock::registry::auth::save_login(&file, host, None)? {
        outln!(
            "Removed login credentials for {host} from {}",
            file.display()
        );
        Ok(())
    } else {
        bail!(airlock::Error::Usage(format!(
            "not logged in to {host} (no entry in {})",
            file.display()
        )))
    }
}

async fn inventory_cmd(
    registry_path: &str,
    output: &std::path::Path,
    sign_key: Option<PathBuf>,
    registry: RegistryArgs,
) -> Result<()> {
    let path = registry_path
        .strip_prefix("docker://")
        .unwrap_or(registry_path)
        .trim_end_matches('/');
    let (host, prefix) = match path.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (path, None),
    };
    if host.is_empty() {
        bail!(airlock::Error::Usage(format!(
            "--registry {registry_path:?}: expected HOST[/PREFIX]"
        )));
    }
    let to_stdout = output.as_os_str() == "-";
    if to_stdout && sign_key.is_some() {
        bail!(airlock::Error::Usage(
            "--sign-key needs an inventory file (-o FILE), not stdout".into()
        ));
    }
    // Read the key first: a bad key should not cost a walk of the registry.
    let signer = sign_key
        .as_deref()
        .map(airlock::trust::BundleSigner::from_file)
        .transpose()
        .map_err(airlock::Error::from)?;
    let registries = Registries::new(registry.config(&[host.to_string()])?);
    let reg = registries.get(host).await?;
    let inventory = airlock::inventory::take(&reg, prefix, registry.jobs, &stderr_events()).await?;
    let bytes = inventory.to_bytes();
    if to_stdout {
        std::io::stdout().write_all(&bytes)?;
    } else {
        airlock::bundle::write_atomically(output, &bytes)?;
        if let Some(s) = &signer {
            let sig = airlock::bundle::signature_path(output);
            airlock::bundle::write_atomically(&sig, s.sign_b64(&bytes).as_bytes())?;
        }
    }
    let mut out = report_out(to_stdout);
    let blob_bytes: u64 = inventory.blobs.iter().map(|b| b.size).sum();
    writeln!(
        out,
        "inventory of {registry_path}: {} repositories, {} manifests, {} blobs ({}) -> {}",
        inventory.repositories,
        inventory.manifests.len(),
        inventory.blobs.len(),
        human_bytes(blob_bytes),
        if to_stdout {
            "stdout".to_string()
        } else {
            output.display().to_string()
        }
    )?;
    writeln!(
        out,
        "file sha256: {}",
        airlock::digest::Digest::of(&bytes).hex()
    )?;
    if signer.is_some() {
        writeln!(
            out,
            "signature: {}",
            airlock::bundle::signature_path(output).display()
        )?;
    }
    Ok(())
}

/// One line per request on stderr (JSON lines with --json); strings from
/// the request are escaped.
fn request_logger(json: bool) -> Arc<dyn Fn(&airlock::serve::RequestLog) + Send + Sync> {
    Arc::new(move |r: &airlock::serve::RequestLog| {
        let line = if json {
            serde_json::to_string(r).unwrap_or_default()
        } else {
            format!(
                "{} {} {} {} {}B {}ms{}",
                r.remote,
                r.method,
                r.path,
                r.status,
                r.bytes,
                r.ms,
                r.user
                    .as_ref()
                    .map(|u| format!(" user={}", airlock::progress::printable(u)))
                    .unwrap_or_default()
            )
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    })
}

async fn serve_cmd(
    bundles: &[PathBuf],
    prefix: Option<&str>,
    verify: VerifyArg,
    trust: TrustArgs,
    opts: airlock::serve::ServeOptions,
) -> Result<()> {
    let policy = trust.load()?;
    let template = match prefix {
        None => "{repo}".to_string(),
        Some(p) => Target::parse(&format!("serve/{}", p.trim_start_matches('/')))?.template,
    };
    let mode = match verify {
        VerifyArg::Full => airlock::serve::VerifyMode::Full,
        VerifyArg::Lazy => airlock::serve::VerifyMode::Lazy,
    };
    let content =
        airlock::serve::Content::load(bundles, &template, policy.as_ref(), mode, &stderr_events())
            .await?;
    let (repos, tags): (usize, usize) = (
        content.repos.len(),
        content.repos.values().map(|r| r.tags.len()).sum(),
    );
    let names = content.bundle_names();
    let server = airlock::serve::bind(content, &opts).await?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    eprintln!(
        "serving {repos} repositories ({tags} tags) from {} at {scheme}://{}/v2/ (read-only{}; verify={}); Ctrl-C stops",
        names.join(", "),
        server.addr,
        if opts.htpasswd.is_some() { ", basic auth" } else { "" },
        match mode {
            airlock::serve::VerifyMode::Full => "full",
            airlock::serve::VerifyMode::Lazy => "lazy",
        }
    );
    server.run(shutdown_signal()).await?;
    eprintln!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn inspect_cmd(bundle: &[PathBuf], json: bool) -> Result<()> {
    let files = airlock::bundle::volumes::expand_paths(bundle).map_err(airlock::Error::from)?;
    let (index, digest, label) = inspect::read_head(&files[0]).map_err(airlock::Error::from)?;
    if json {
        // `images` has the shape every report uses; `index` is the bundle
        // index itself (docs/bundle-format.md §4).
        let images: Vec<serde_json::Value> = index
            .images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "source": i.source,
                    "repository": i.repository,
                    "tag": i.tag,
                    "digest": i.digest,
                    "sourceDigest": i.source_digest,
                    "platforms": i.platforms.iter().map(|p| p.platform.clone().unwrap_or_else(|| "-".into())).collect::<Vec<_>>(),
                    "artifacts": i.artifacts.len(),
                    "size": i.total_size,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "bundleDigest": digest,
            "volume": label,
            "images": images,
            "index": index,
        }));
    }
    write!(
        std::io::stdout(),
        "{}",
        inspect::render(&index, &digest, label.as_ref())
    )?;
    Ok(())
}

async fn verify_cmd(
    files: &[String],
    json: bool,
    file_hash: verify::FileHash,
    trust: TrustArgs,
    bundle_key: BundleKeyArgs,
    audit: Option<&mut airlock::audit::AuditRecord>,
) -> Result<()> {
    let policy = trust.load()?;
    let bundle = files[0].as_str();
    let paths: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    let expanded = if bundle == "-" {
        paths.clone()
    } else {
        airlock::bundle::volumes::expand_paths(&paths).map_err(airlock::Error::from)?
    };
    let bundle_key = bundle_key.load(&expanded[0].display().to_string())?;
    let result = if bundle == "-" {
        let input: Box<dyn Read + Send> = Box::new(std::io::stdin());
        verify::verify_bundle(
            std::path::Path::new("stdin"),
            Some(input),
            policy.as_ref(),
            &bundle_key,
            verify::FileHash::Check,
        )
        .await
    } else if expanded.len() == 1 {
        verify::verify_bundle(&expanded[0], None, policy.as_ref(), &bundle_key, file_hash).await
    } else {
        verify::verify_volumes(&expanded, policy.as_ref(), &bundle_key, file_hash).await
    };
    let report = match result {
        Ok(r) => r,
        // With --json, main prints the error as the JSON document.
        Err(e) => return Err(e.into()),
    };
    if json {
        print_json(&report)?;
    } else {
        print_verify(&report)?;
    }
    if let Some(record) = audit {
        record.bundle_digest = Some(report.bundle_digest.clone());
        record.images = report
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                airlock::audit::AuditImage::new(
                    &img.source,
                    "",
                    &img.digest,
                    report.policy.as_ref().and_then(|v| v.get(i)),
                    "intact (no keys or policy given)",
                )
            })
            .collect();
        record.counts = serde_json::json!({"members": report.members, "bytes": report.bytes});
    }
    match report.trust_failure() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn verify_images_cmd(
    refs: &[String],
    json: bool,
    trust: TrustArgs,
    registry: RegistryArgs,
) -> Result<()> {
    let policy = trust.load()?;
    let sel = selection::from_refs(refs, &[])?;
    let hosts: Vec<String> = sel.iter().map(|s| s.repo.registry.clone()).collect();
    let registries = Registries::new(registry.config(&hosts)?);
    let report = verify::verify_images(
        &registries,
        sel,
        policy.as_ref(),
        registry.jobs,
        &stderr_events(),
    )
    .await?;
    if json {
        print_json(&report)?;
    } else {
        for img in &report.images {
            outln!(
                "ok  {}  {}  [{}]  {} blobs, {} artifacts",
                img.source,
                img.digest,
                img.platforms.join(", "),
                img.blobs,
                img.artifacts
            );
        }
        outln!(
            "verified {}: {} blobs ({}) read and hashed, graph complete",
            report.source,
            report.blobs,
            human_bytes(report.bytes)
        );
        match &report.policy {
            Some(verdicts) => {
                for v in verdicts {
                    outln!("{}", v.line());
                }
            }
            None => outln!("signatures: not checked (give --key or --policy)"),
        }
    }
    match report.trust_failure() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn print_verify(report: &verify::VerifyReport) -> Result<()> {
    if let Some(s) = &report.bundle_signature {
        match &s.error {
            None => outln!("bundle signature: verified with {}", s.key),
            Some(e) => outln!("bundle signature: NOT verified with {}: {e}", s.key),
        }
    }
    for img in &report.images {
        outln!(
            "ok  {}  {}  [{}]  {} blobs, {} artifacts",
            img.source,
            img.digest,
            img.platforms.join(", "),
            img.blobs,
            img.artifacts
        );
    }
    for u in &report.unreferenced {
        outln!("note: member {u} is listed but no image needs it");
    }
    for v in &report.volumes {
        outln!(
            "ok  volume {} of {}  {}  {} members{}{}",
            v.volume,
            v.count,
            v.path,
            v.members,
            if v.chunks > 0 {
                format!(", {} chunks", v.chunks)
            } else {
                String::new()
            },
            match (v.file_sha256.as_str(), v.sidecar_ok) {
                ("", _) => String::new(),
                (hex, Some(true)) => format!("  file sha256 {hex} (matches its .sha256)"),
                (hex, _) => format!("  file sha256 {hex} (no .sha256 file)"),
            }
        );
    }
    if !report.missing_volumes.is_empty() {
        outln!(
            "verified the volumes given of bundle {}: intact. Volume(s) {} not given: the images, their graph and chunks cut across volumes are checked when every volume is given",
            report.bundle_digest,
            report
                .missing_volumes
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    outln!(
        "verified {}: {} members, {} checked, graph complete{}",
        report.bundle,
        report.members,
        human_bytes(report.bytes),
        match (report.file_sha256.as_str(), report.sidecar_ok) {
            (_, Some(true)) => ", file sha256 matches the .sha256 file",
            ("", _) =>
                " (the whole file was not hashed: --file-hash checks it against NAME.sha256)",
            _ => " (no .sha256 file to compare)",
        }
    );
    if report.external_blobs > 0 {
        outln!(
            "incremental bundle: relies on {} blobs ({}) the site must already have (import checks)",
            report.external_blobs,
            human_bytes(report.external_bytes)
        );
    }
    outln!(
        "bundle digest: {}  created {} by {}",
        report.bundle_digest,
        report.created,
        report.tool
    );
    if let Some(verdicts) = &report.policy {
        for v in verdicts {
            outln!("{}", v.line());
        }
        if !report.policy_failed() {
            outln!("policy: every image admitted");
        }
    } else {
        outln!("signatures: not checked (give --key or --policy)");
    }
    Ok(())
}

#[cfg(feature = "fixtures")]
async fn fixtures_cmd(
    to: Option<String>,
    write_trusted_root: Option<PathBuf>,
    scale: usize,
    registry: RegistryArgs,
) -> Result<()> {
    if let Some(path) = write_trusted_root {
        let json = airlock::fixtures::sigstore::TestSigstore::new().trusted_root_json();
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let Some(to) = to else {
        return Ok(());
    };
    let (host, prefix) = to.split_once('/').unwrap_or((&to, ""));
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let registries = Registries::new(registry.config(&[host.to_string()])?);
    let reg = registries.get(host).await?;
    for img in airlock::fixtures::seed(&reg, &prefix, scale).await? {
        outln!(
            "{host}/{}:{}  {}  {} artifacts",
            img.repository,
            img.tag,
            img.digest,
            img.artifact_tags.len()
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM arrived: the operation was dropped, and the process
/// exits with 128 + the signal's number, as a shell reports it.
#[derive(Debug)]
struct Interrupted {
    signal: i32,
    message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    fn of_export(signal: i32, opts: &ExportOptions) -> Interrupted {
        let state = airlock::output::state_dir(&opts.output);
        let message = if opts.output.as_os_str() == "-" {
            "export interrupted; nothing was kept".to_string()
        } else if let Some(cache) = &opts.cache_dir {
            format!(
                "export interrupted; {} was not written; verified blobs are kept in {}: rerun the \
                 same command to resume",
                opts.output.display(),
                cache.display()
            )
        } else if state.is_dir() {
            format!(
                "export interrupted; {} was not written; its resumable state (the blobs \
                 written so far) is in {}: rerun the same command to resume, or delete that \
                 directory to start over",
                opts.output.display(),
                state.display(),
            )
        } else {
            format!(
                "export interrupted before any blob was downloaded; {} was not written",
                opts.output.display()
            )
        };
        Interrupted { signal, message }
    }
}

/// Resolves with the signal's number on the first SIGINT or SIGTERM.
fn interrupted() -> Result<impl std::future::Future<Output = i32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => 2,
            _ = term.recv() => 15,
        }
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The one place where failures become exit codes.
fn exit_code(e: &anyhow::Error) -> i32 {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<airlock::Error>())
        .map(|a| a.kind());
    match kind {
        Some(ErrorKind::Usage) => EXIT_USAGE,
        Some(ErrorKind::Integrity) => EXIT_INTEGRITY,
        Some(ErrorKind::Policy) => EXIT_POLICY,
        _ => 1,
    }
}

/// `airlock help TOPIC` for the file formats; clap's own help for commands.
fn help_topic() -> Option<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [first, topic] = args.as_slice() else {
        return None;
    };
    if first != "help" {
        return None;
    }
    let text = airlock::help::topic(topic)?;
    let _ = write!(std::io::stdout(), "{text}");
    Some(0)
}

fn main() {
    if let Some(code) = help_topic() {
        std::process::exit(code);
    }
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    progress::set_verbose(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        if is_broken_pipe(&e) {
            // The reader went away (`| head`): nothing more to say.
            std::process::exit(0);
        }
        if let Some(i) = e.downcast_ref::<Interrupted>() {
            eprintln!("airlock: {i}");
            std::process::exit(128 + i.signal);
        }
        let code = exit_code(&e);
        if std::env::args().any(|a| a == "--json")
            && !JSON_PRINTED.load(std::sync::atomic::Ordering::Relaxed)
        {
            print_json_error(&e, code);
        }
        eprintln!(
            "airlock: error: {}",
            airlock::progress::printable_text(&airlock::error::chain_text(e.chain()))
        );
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_names_the_bundle_format_it_writes() {
        let format = format!("bundle format {})", airlock::bundle::FORMAT_VERSION);
        assert!(super::VERSION.ends_with(&format), "{}", super::VERSION);
    }
}
