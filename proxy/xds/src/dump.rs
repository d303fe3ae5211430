//! What the client applied and what it refused, resource by resource, as the control plane
//! sent it: the source of the proxy's `/config_dump`. Keeping the protos (not the converted
//! types) lets the dump show exactly what arrived, and a refused resource keeps its error
//! beside the version still serving, so a NACK is never silent.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use switchboard_xds_proto::ResourceType;
use switchboard_xds_proto::pb::google::protobuf::Any;

/// One resource's state: the applied version (if any) and the last refusal (if any).
#[derive(Debug, Clone, Default)]
pub struct DumpEntry {
    pub applied: Option<Applied>,
    pub error: Option<Refused>,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub version: String,
    pub resource: Any,
    pub last_updated: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Refused {
    pub version: String,
    /// The refused resource as received, when it could be decoded far enough to be named.
    pub resource: Option<Any>,
    pub details: String,
    pub last_updated: SystemTime,
}

/// A shared handle; the client writes, the admin port reads.
#[derive(Debug, Clone, Default)]
pub struct ConfigDump {
    inner: Arc<RwLock<BTreeMap<(ResourceType, String), DumpEntry>>>,
}

impl ConfigDump {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every resource of `kind`, by name.
    pub fn entries(&self, kind: ResourceType) -> Vec<(String, DumpEntry)> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, name), e)| (name.clone(), e.clone()))
            .collect()
    }

    pub(crate) fn applied(&self, kind: ResourceType, name: &str, version: &str, resource: Any) {
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry((kind, name.to_owned())).or_default();
        entry.applied = Some(Applied {
            version: version.to_owned(),
            resource,
            last_updated: SystemTime::now(),
        });
        entry.error = None;
    }

    pub(crate) fn refused(
        &self,
        kind: ResourceType,
        name: &str,
        version: &str,
        resource: Option<Any>,
        details: &str,
    ) {
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        map.entry((kind, name.to_owned())).or_default().error = Some(Refused {
            version: version.to_owned(),
            resource,
            details: details.to_owned(),
            last_updated: SystemTime::now(),
        });
    }

    pub(crate) fn removed(&self, kind: ResourceType, name: &str) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(kind, name.to_owned()));
    }
}
