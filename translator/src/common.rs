//! Small protobuf builders shared by every resource kind.

use crate::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use crate::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use crate::pb::google::protobuf::{Duration, UInt32Value};

/// A protobuf duration from a model duration.
pub(crate) fn duration(d: switchboard_model::Duration) -> Duration {
    std_duration(d.as_std())
}

pub(crate) fn std_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Always below 10^9, so it fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn millis(ms: u64) -> Duration {
    std_duration(std::time::Duration::from_millis(ms))
}

pub(crate) fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// `percent` of a hundred, the form both fault injection and mirroring take.
pub(crate) fn percent(percent: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: percent.min(100),
        denominator: DenominatorType::Hundred as i32,
    }
}

/// "Over the same ADS stream, in v3": how every dynamic resource points at another (RDS from a
/// listener, EDS from a cluster). gRPC supports only this form.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A TCP socket address.
pub(crate) fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}
