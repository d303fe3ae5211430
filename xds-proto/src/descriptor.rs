//! The protobuf descriptors of the xDS services, for gRPC reflection.
//!
//! With reflection, `grpcurl` and similar tools can call the xDS services and
//! print the resources inside each `Any` without local `.proto` files. The
//! set is cut by `build.rs` out of the one envoy-types ships: the services in
//! [`service_name::ALL`](crate::service_name::ALL), the messages in
//! [`type_url::ALL`](crate::type_url::ALL), and everything they import,
//! including the `google/protobuf` well-known types. Comments are stripped;
//! custom options such as `(validate.rules)` are kept.

/// Encoded `google.protobuf.FileDescriptorSet`, dependency-closed, to pass to
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/xds_descriptor_set.bin"));

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::collections::HashSet;

    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorSet};

    use super::FILE_DESCRIPTOR_SET;
    use crate::{service_name, type_url};

    fn set() -> FileDescriptorSet {
        FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap()
    }

    fn qualify(package: &str, name: &str) -> String {
        format!(".{package}.{name}").replace("..", ".")
    }

    /// Fully-qualified (leading dot) names of every message, enum and service.
    fn symbols(set: &FileDescriptorSet) -> HashSet<String> {
        fn message(prefix: &str, m: &DescriptorProto, out: &mut HashSet<String>) {
            let name = qualify(prefix, m.name());
            for e in &m.enum_type {
                out.insert(format!("{name}.{}", e.name()));
            }
            for nested in &m.nested_type {
                message(&name, nested, out);
            }
            out.insert(name);
        }
        let mut out = HashSet::new();
        for file in &set.file {
            for m in &file.message_type {
                message(file.package(), m, &mut out);
            }
            for e in &file.enum_type {
                out.insert(qualify(file.package(), e.name()));
            }
            for s in &file.service {
                out.insert(qualify(file.package(), s.name()));
            }
        }
        out
    }

    #[test]
    fn contains_every_service() {
        let symbols = symbols(&set());
        for service in service_name::ALL {
            assert!(
                symbols.contains(&format!(".{service}")),
                "{service} missing"
            );
        }
    }

    #[test]
    fn contains_every_any_payload_type() {
        let symbols = symbols(&set());
        for url in type_url::ALL {
            let name = type_url::message_name(url);
            assert!(symbols.contains(&format!(".{name}")), "{name} missing");
        }
    }

    #[test]
    fn is_dependency_closed() {
        let set = set();
        let names: HashSet<&str> = set.file.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), set.file.len(), "duplicate file names");
        assert!(names.contains("google/protobuf/any.proto"));
        assert!(names.contains("google/protobuf/descriptor.proto"));
        for file in &set.file {
            for dep in &file.dependency {
                assert!(
                    names.contains(dep.as_str()),
                    "{} imports missing {dep}",
                    file.name()
                );
            }
        }
    }

    /// Stronger than closed imports: every type a field or method names is
    /// defined somewhere in the set, so a reflection client can decode it.
    #[test]
    fn every_referenced_type_resolves() {
        fn check(m: &DescriptorProto, symbols: &HashSet<String>) {
            for field in m.field.iter().chain(&m.extension) {
                if let Some(t) = &field.type_name {
                    assert!(symbols.contains(t), "{}.{} -> {t}", m.name(), field.name());
                }
            }
            for nested in &m.nested_type {
                check(nested, symbols);
            }
        }
        let set = set();
        let symbols = symbols(&set);
        for file in &set.file {
            file.message_type.iter().for_each(|m| check(m, &symbols));
            for method in file.service.iter().flat_map(|s| &s.method) {
                assert!(symbols.contains(method.input_type()), "{method:?}");
                assert!(symbols.contains(method.output_type()), "{method:?}");
            }
        }
    }

    #[test]
    fn comments_dropped_custom_options_kept() {
        let set = set();
        assert!(set.file.iter().all(|f| f.source_code_info.is_none()));
        // prost-types has no fields for extension options and drops them, so
        // re-encoding is shorter exactly when the raw bytes still carry them.
        assert!(set.encode_to_vec().len() < FILE_DESCRIPTOR_SET.len());
    }

    #[test]
    fn tonic_reflection_accepts_it() {
        let built = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1();
        assert!(built.is_ok());
    }
}
