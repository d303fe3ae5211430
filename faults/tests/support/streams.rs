//! Many ADS streams through the load balancer's xDS port, kept open as gRPC clients keep
//! them: the xDS server's hand-driven test client ([`AdsClient`]) over a few shared HTTP/2
//! connections (tonic channels), each stream subscribed to every Cluster and ACKing what it
//! gets; when a stream ends (its connection closed by a draining replica) it opens a new one
//! on its channel, which reconnects through HAProxy to a live replica.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchboard_xds_proto::type_url::CLUSTER;
use switchboard_xds_server::testing::{AdsClient, node};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// One stream's life, as its task reports it.
#[derive(Debug)]
enum Event {
    /// Open: the stream got (and ACKed) its first response at `at`.
    Connected { id: usize, at: Instant },
    /// The cluster names of a response it got (at `at`) and ACKed.
    Clusters {
        id: usize,
        names: Vec<String>,
        at: Instant,
    },
    /// The stream ended at `at`.
    Ended { id: usize, at: Instant },
}

/// The streams' tasks, and what they have reported so far.
pub struct Streams {
    tasks: Vec<JoinHandle<()>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The streams open now (got their first response, not ended since).
    pub open: BTreeMap<usize, Instant>,
    /// The last cluster names each stream got, and when.
    pub names: BTreeMap<usize, (Vec<String>, Instant)>,
    /// When a stream opened, for every opening (first ones and reconnects).
    pub connected: Vec<Instant>,
    /// When a stream ended.
    pub ended: Vec<Instant>,
    pub count: usize,
}

impl Streams {
    /// Starts `count` streams as nodes `load-{i}` of mesh `local/demo` with `token`, spread
    /// over `connections` channels to `url`.
    pub fn start(url: &str, token: &str, count: usize, connections: usize) -> Streams {
        let channels: Vec<Channel> = (0..connections.max(1))
            .map(|_| {
                Endpoint::from_shared(url.to_owned())
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy()
            })
            .collect();
        let (tx, events) = mpsc::unbounded_channel();
        let tasks = (0..count)
            .map(|id| {
                let channel = channels[id % channels.len()].clone();
                tokio::spawn(keep_streaming(id, channel, token.to_owned(), tx.clone()))
            })
            .collect();
        Streams {
            tasks,
            events,
            open: BTreeMap::new(),
            names: BTreeMap::new(),
            connected: Vec::new(),
            ended: Vec::new(),
            count,
        }
    }

    fn take(&mut self, e: Event) {
        match e {
            Event::Connected { id, at } => {
                self.open.insert(id, at);
                self.connected.push(at);
            }
            Event::Clusters { id, names, at } => {
                self.names.insert(id, (names, at));
            }
            Event::Ended { id, at } => {
                self.open.remove(&id);
                self.ended.push(at);
            }
        }
    }

    /// Takes the streams' reports until `done` holds, for at most `patience`; every report
    /// already sent is taken before `done` is first asked.
    pub async fn until(
        &mut self,
        patience: Duration,
        what: &str,
        done: impl Fn(&Streams) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + patience;
        while let Ok(e) = self.events.try_recv() {
            self.take(e);
        }
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => self.take(e),
                Ok(None) => return Err(format!("{what}: every stream task stopped")),
                Err(_) => {
                    return Err(format!(
                        "{what}: not within {patience:?} ({} of {} streams open)",
                        self.open.len(),
                        self.count
                    ));
                }
            }
        }
        Ok(())
    }

    /// Streams whose last response does not list `cluster`.
    pub fn without(&self, cluster: &str) -> usize {
        (0..self.count)
            .filter(|id| {
                self.names
                    .get(id)
                    .is_none_or(|(n, _)| !n.iter().any(|c| c == cluster))
            })
            .count()
    }

    /// When the last of the streams got its last response.
    pub fn last_response(&self) -> Option<Instant> {
        self.names.values().map(|(_, at)| *at).max()
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The cluster names of a CDS response.
fn clusters(resp: &switchboard_xds_proto::DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .filter_map(|any| {
            switchboard_xds_proto::unpack::<switchboard_xds_proto::Cluster>(any)
                .ok()
                .map(|c| c.name)
        })
        .collect()
}

/// Keeps stream `id` open over `channel`, opening it again (after a short pause, as a client's
/// backoff would) whenever it fails to open or ends.
async fn keep_streaming(
    id: usize,
    channel: Channel,
    token: String,
    events: mpsc::UnboundedSender<Event>,
) {
    let me = node("local", "demo", &format!("load-{id}"));
    loop {
        let opened = async {
            let mut c = AdsClient::over(channel.clone(), me.clone(), Some(&token)).await?;
            c.subscribe(CLUSTER, &[]).await?;
            let first = c.recv_and_ack(&[]).await?;
            Ok::<_, tonic::Status>((c, first))
        };
        let (mut client, first) = match opened.await {
            Ok(ok) => ok,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = events.send(Event::Connected {
            id,
            at: Instant::now(),
        });
        let _ = events.send(Event::Clusters {
            id,
            names: clusters(&first),
            at: Instant::now(),
        });
        loop {
            match client.recv_within(Duration::from_secs(3600)).await {
                None => continue,
                Some(Ok(resp)) => {
                    let _ = client.ack(&resp, &[]).await;
                    let _ = events.send(Event::Clusters {
                        id,
                        names: clusters(&resp),
                        at: Instant::now(),
                    });
                }
                Some(Err(_)) => {
                    let _ = events.send(Event::Ended {
                        id,
                        at: Instant::now(),
                    });
                    break;
                }
            }
        }
    }
}

/// How many of `times` fall in each whole second after `from` (the last bin holds the rest).
pub fn per_second(times: &[Instant], from: Instant, seconds: usize) -> Vec<usize> {
    let mut bins = vec![0usize; seconds + 1];
    for t in times.iter().filter(|t| **t >= from) {
        let s = t.duration_since(from).as_secs() as usize;
        bins[s.min(seconds)] += 1;
    }
    bins
}
