//! TLS for broker tests. tansu 0.6.0 has no working TLS: its command line refuses
//! `--cert` and `--key` together (they are alternatives of one argument group), and
//! with `--cert` alone the broker builds a TLS acceptor and drops it (`let _acceptor =
//! ...` in tansu-broker 0.6.0 `broker.rs`), so it answers a TLS client's hello with
//! nothing. The harness therefore puts a TLS-terminating front on loopback before
//! tansu, and tansu advertises the front's address, so every connection a client makes
//! after bootstrap goes through TLS too.
//!
//! Certificates are made per test with rcgen: a CA, a server certificate for
//! `localhost` and `127.0.0.1` (librdkafka checks the broker's name by default), and a
//! client certificate the front can require.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// PEM files of one test's certificates, in a tempdir that lives as long as this.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    /// A new CA with a server certificate and a client certificate signed by it.
    pub fn generate() -> Certificates {
        let dir = tempfile::Builder::new()
            .prefix("eventd-tls-")
            .tempdir()
            .expect("tempdir for certificates");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "eventd test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::new()).expect("client params");
        client.distinguished_name.push(DnType::CommonName, "eventd");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client
            .signed_by(&client_key, &issuer)
            .expect("client certificate");

        let certificates = Certificates { dir };
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(certificates.path(name), pem).expect("write certificate");
        }
        certificates
    }

    /// The file `name` of this set: `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`, or one a test wrote beside them.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A TLS listener on loopback that forwards each connection's plaintext to `upstream`.
/// Handshakes it refused are kept for tests to show why a client did not get through.
pub struct TlsFront {
    address: SocketAddr,
    refused: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsFront {
    /// Listens on `port` with the server certificate of `certificates`; with
    /// `require_client_certificate`, a client must present one signed by their CA.
    pub fn start(
        port: u16,
        upstream: SocketAddr,
        certificates: &Certificates,
        require_client_certificate: bool,
    ) -> TlsFront {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certificates.path("server.pem"))
                .expect("server certificate file")
                .collect::<Result<_, _>>()
                .expect("server certificate PEM");
        let key =
            PrivateKeyDer::from_pem_file(certificates.path("server.key")).expect("server key PEM");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let config = if require_client_certificate {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(certificates.path("ca.pem")).expect("CA file") {
                roots.add(ca.expect("CA PEM")).expect("CA certificate");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
        } else {
            builder.with_no_client_auth().with_single_cert(chain, key)
        }
        .expect("TLS server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime for the TLS front");
        let listener = runtime
            .block_on(TcpListener::bind(("127.0.0.1", port)))
            .unwrap_or_else(|error| panic!("TLS front cannot listen on port {port}: {error}"));
        let address = listener.local_addr().expect("TLS front address");
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let refusals = refused.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(serve(listener, acceptor, upstream, refusals, stopped));
        });
        TlsFront {
            address,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Why each refused handshake failed, in order.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().expect("refusals lock").clone()
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    refused: Arc<Mutex<Vec<String>>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let mut tls = match acceptor.accept(client).await {
                Ok(tls) => tls,
                Err(error) => {
                    refused
                        .lock()
                        .expect("refusals lock")
                        .push(error.to_string());
                    return;
                }
            };
            // tansu stopped for a restart is a refused connection: the client sees the
            // stream close and reconnects, as it would to a broker that went away.
            let Ok(mut broker) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
        });
    }
}
