//! The streams' side of registration: a stream sends what it asks for and holds a guard whose
//! drop says it ended. Sending never waits, so a stream's own path never waits on the store.

use std::sync::OnceLock;

use tokio::sync::mpsc;

use super::endpoint::Desired;
use crate::node::NodeId;

/// What streams tell the registration task.
#[derive(Debug)]
pub(super) enum Event {
    Register {
        stream: u64,
        node: NodeId,
        desired: Desired,
    },
    Deregister {
        stream: u64,
        node: NodeId,
    },
}

/// The streams' side of the registration task: off until the task is started.
#[derive(Debug, Default)]
pub(crate) struct Registrar {
    tx: OnceLock<mpsc::UnboundedSender<Event>>,
}

impl Registrar {
    /// Registers stream `stream` of `node`; the endpoint is deregistered (after the grace
    /// period) once the returned guard of every stream of the node has dropped. `None` when
    /// registration is off.
    pub(crate) fn register(
        &self,
        stream: u64,
        node: &NodeId,
        desired: Desired,
    ) -> Option<Registered> {
        let tx = self.tx.get()?;
        tx.send(Event::Register {
            stream,
            node: node.clone(),
            desired,
        })
        .ok()?;
        Some(Registered {
            tx: tx.clone(),
            stream,
            node: node.clone(),
        })
    }

    /// Whether the registration task was started.
    pub(crate) fn enabled(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Turns registration on and gives the task its events; `None` when it was on already
    /// (one task per registrar).
    pub(super) fn connect(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx.set(tx).ok().map(|()| rx)
    }
}

/// Held by a registered stream; its drop tells the task the stream ended.
#[derive(Debug)]
pub(crate) struct Registered {
    tx: mpsc::UnboundedSender<Event>,
    stream: u64,
    node: NodeId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Deregister {
            stream: self.stream,
            node: self.node.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_model::{Kind, Spec};

    fn desired() -> Desired {
        let spec = Spec::parse(
            Kind::Endpoint,
            serde_json::json!({"service": "pay", "address": "10.0.0.1", "node": "pay-1"}),
        )
        .unwrap();
        Desired {
            name: "sidecar-pay-1".to_owned(),
            spec,
        }
    }

    #[test]
    fn off_until_connected_and_a_dropped_guard_deregisters() {
        let registrar = Registrar::default();
        let node = NodeId {
            tenant: "acme".to_owned(),
            mesh: "prod".to_owned(),
            name: "pay-1".to_owned(),
        };
        assert!(!registrar.enabled());
        assert!(registrar.register(1, &node, desired()).is_none());
        let mut rx = registrar.connect().unwrap();
        assert!(registrar.connect().is_none(), "one task per registrar");
        assert!(registrar.enabled());
        let guard = registrar.register(7, &node, desired()).unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Register { stream: 7, node: n, .. }) if n == node
        ));
        assert!(rx.try_recv().is_err());
        drop(guard);
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Deregister { stream: 7, node: n }) if n == node
        ));
    }
}
