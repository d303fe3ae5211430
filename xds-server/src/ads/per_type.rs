//! Per-type values of one stream, held inline.

use switchboard_xds_proto::ResourceType;

/// A value per resource type, held inline: a stream has at most five types, where a map
/// would allocate a node with room for eleven and keep it for the stream's life.
#[derive(Debug)]
pub(super) struct PerType<T>([Option<T>; 5]);

impl<T> Default for PerType<T> {
    fn default() -> Self {
        Self([None, None, None, None, None])
    }
}

impl<T> PerType<T> {
    fn slot(t: ResourceType) -> usize {
        match t {
            ResourceType::Secret => 0,
            ResourceType::Cluster => 1,
            ResourceType::ClusterLoadAssignment => 2,
            ResourceType::Listener => 3,
            ResourceType::RouteConfiguration => 4,
        }
    }

    pub(super) fn get(&self, t: ResourceType) -> Option<&T> {
        self.0[Self::slot(t)].as_ref()
    }

    pub(super) fn insert(&mut self, t: ResourceType, value: T) {
        self.0[Self::slot(t)] = Some(value);
    }

    pub(super) fn remove(&mut self, t: ResourceType) -> Option<T> {
        self.0[Self::slot(t)].take()
    }

    pub(super) fn get_or_insert(&mut self, t: ResourceType, value: T) -> &mut T {
        self.0[Self::slot(t)].get_or_insert(value)
    }
}
