//! The Prometheus endpoint both programs serve with `--metrics ADDR:PORT`: `GET /metrics`
//! answered in the Prometheus text exposition format (version 0.0.4), by prometheus-client's
//! encoder, from a thread of its own. HTTP is tiny_http's (request parsing, keep-alive,
//! errors): a few hundred lines of well-tried code rather than a hand-written parser facing
//! the network. No authentication and no TLS, and tiny_http gives each open connection a
//! worker thread with no read timeout: bind it to loopback or a management network.
//!
//! Owns: the listening socket and thread, the routes (`/metrics`, 404 elsewhere, 405 for
//! methods other than GET and HEAD), and small helpers ([`counter`], [`gauge`],
//! [`counter_family`], [`histogram`]) that write one metric family through prometheus-client's
//! `DescriptorEncoder`, for the programs' collectors.
//! Must not: read anything a reactor has to lock: collectors read atomics or copy small
//! maps, so a scrape never makes a reactor wait.

use std::net::SocketAddr;

use prometheus_client::encoding::prometheus_text::{CONTENT_TYPE, encode};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Response, Server};

/// The running endpoint.
pub struct Exporter {
    addr: SocketAddr,
}

impl Exporter {
    /// Binds `addr` and serves `registry` (its collectors are asked on each scrape) from a new
    /// thread, until the process exits.
    pub fn spawn(addr: SocketAddr, registry: Registry) -> std::io::Result<Exporter> {
        let content_type = Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE.as_bytes())
            .map_err(|()| std::io::Error::other("bad Content-Type header"))?;
        let server = Server::http(addr).map_err(|e| {
            std::io::Error::other(format!("cannot listen on {addr} for metrics: {e}"))
        })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&server, &registry, &content_type))?;
        Ok(Exporter { addr: bound })
    }

    /// The address bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Answers requests until the listener fails.
fn serve(server: &Server, registry: &Registry, content_type: &Header) {
    for request in server.incoming_requests() {
        let response = match (request.method(), request.url()) {
            (Method::Get | Method::Head, "/metrics") => {
                let mut text = String::with_capacity(8 * 1024);
                match encode(&mut text, registry) {
                    Ok(()) => Response::from_string(text)
                        .with_header(content_type.clone())
                        .boxed(),
                    Err(e) => {
                        log::error!("metrics: cannot encode: {e}");
                        Response::from_string("cannot encode the metrics\n")
                            .with_status_code(500)
                            .boxed()
                    }
                }
            }
            (Method::Get | Method::Head, _) => Response::from_string("not found\n")
                .with_status_code(404)
                .boxed(),
            _ => Response::from_string("method not allowed\n")
                .with_status_code(405)
                .boxed(),
        };
        if let Err(e) = request.respond(response) {
            log::debug!("metrics: cannot answer a scrape: {e}");
        }
    }
}

/// Writes a counter `name` (the encoder adds `_total`) with value `v`.
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

/// Writes a gauge `name` with value `v`.
pub fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// Writes a counter `name` with one series per `(label value, count)`, the label named
/// `label`.
pub fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in series {
        let labels = [(label, *value)];
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(n, None)?;
    }
    Ok(())
}

/// Writes a histogram `name`: the sum and count of the observations, and `(upper bound,
/// observations in this bucket only)` with the last bound infinite.
pub fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    sum: f64,
    count: u64,
    buckets: &[(f64, u64)],
) -> std::fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;
    use std::io::{Read, Write};

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            counter(&mut enc, "t_things", "Things.", 3)?;
            gauge(&mut enc, "t_level", "Level.", 1.5)?;
            counter_family(
                &mut enc,
                "t_refused",
                "Refused.",
                "reason",
                &[("a", 1), ("b", 2)],
            )?;
            histogram(
                &mut enc,
                "t_seconds",
                "Time.",
                0.75,
                3,
                &[(0.1, 1), (1.0, 2), (f64::INFINITY, 0)],
            )
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connects");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reads");
        out
    }

    #[test]
    fn serves_the_exposition_and_nothing_else() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed));
        let e = Exporter::spawn("127.0.0.1:0".parse().expect("address"), registry).expect("binds");
        let answer = get(e.local_addr(), "/metrics");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(head.contains("version=0.0.4"), "{head}");
        for line in [
            "# TYPE t_things_total counter",
            "t_things_total 3",
            "t_level 1.5",
            "t_refused_total{reason=\"a\"} 1",
            "t_refused_total{reason=\"b\"} 2",
            "t_seconds_bucket{le=\"0.1\"} 1",
            "t_seconds_bucket{le=\"1\"} 3",
            "t_seconds_bucket{le=\"+Inf\"} 3",
            "t_seconds_sum 0.75",
            "t_seconds_count 3",
        ] {
            assert!(body.lines().any(|l| l == line), "{line:?} in\n{body}");
        }
        assert!(get(e.local_addr(), "/").starts_with("HTTP/1.0 404"));
    }
}
