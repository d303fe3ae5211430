//! The OpenAPI 3 document, generated from the code: schemas come from the model's types
//! (utoipa derives), paths from the kind registry, so a new kind or field shows up by itself.

use crate::credentials::{CredentialView, NewCredentialRequest};
use crate::resources::ResourceView;
use crate::tenants::{TenantSpec, TenantView};
use axum::response::{IntoResponse, Response};
use switchboard_model::Kind;
use switchboard_model::spec::{EndpointSpec, GatewaySpec, MeshSpec, RouteSpec, ServiceSpec};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, Required, ResponseBuilder, Type,
};

fn spec_schema(kind: Kind) -> &'static str {
    match kind {
        Kind::Mesh => "MeshSpec",
        Kind::Service => "ServiceSpec",
        Kind::Endpoint => "EndpointSpec",
        Kind::Route => "RouteSpec",
        Kind::Gateway => "GatewaySpec",
    }
}

fn param(name: &str, at: ParameterIn, desc: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at.clone())
        .required(if at == ParameterIn::Path {
            Required::True
        } else {
            Required::False
        })
        .description(Some(desc))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn json(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build()
}

fn problem() -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description("an RFC 9457 problem naming the offending field")
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn op(
    summary: String,
    params: &[utoipa::openapi::path::Parameter],
    body: Option<&str>,
    ok: (&str, Option<&str>),
) -> utoipa::openapi::path::Operation {
    let mut b = OperationBuilder::new().summary(Some(summary));
    for p in params {
        b = b.parameter(p.clone());
    }
    if let Some(schema) = body {
        b = b.request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json(schema))
                .content("application/yaml", json(schema))
                .required(Some(Required::True))
                .build(),
        ));
    }
    let mut resp = ResponseBuilder::new().description("success");
    if let Some(schema) = ok.1 {
        resp = resp.content("application/json", json(schema));
    }
    b.response(ok.0, resp.build())
        .response("4XX", problem())
        .build()
}

/// Builds the document.
pub fn openapi() -> OpenApi {
    let tp = param("tenant", ParameterIn::Path, "tenant name");
    let mp = param("mesh", ParameterIn::Path, "mesh name");
    let np = param("name", ParameterIn::Path, "resource name");
    let dry = param(
        "dryRun",
        ParameterIn::Query,
        "validate everything, write nothing",
    );
    let page = [
        param("pageSize", ParameterIn::Query, "1 to 1000, default 100"),
        param(
            "pageToken",
            ParameterIn::Query,
            "nextPageToken of the previous page",
        ),
    ];
    let if_match = param(
        "If-Match",
        ParameterIn::Header,
        "write only if the etag still matches (412 otherwise)",
    );
    let mut paths = PathsBuilder::new();
    paths = paths
        .path(
            "/v1/tenants",
            PathItem::new(
                HttpMethod::Get,
                op("List tenants".into(), &page, None, ("200", None)),
            ),
        )
        .path(
            "/v1/tenants",
            PathItem::new(
                HttpMethod::Post,
                op(
                    "Create a tenant (platform admin)".into(),
                    std::slice::from_ref(&dry),
                    Some("NewTenant"),
                    ("201", Some("TenantView")),
                ),
            ),
        )
        .path(
            "/v1/tenants/{tenant}",
            PathItem::new(
                HttpMethod::Get,
                op(
                    "Get a tenant".into(),
                    std::slice::from_ref(&tp),
                    None,
                    ("200", Some("TenantView")),
                ),
            ),
        )
        .path(
            "/v1/tenants/{tenant}",
            PathItem::new(
                HttpMethod::Delete,
                op(
                    "Delete a tenant and everything it owns".into(),
                    std::slice::from_ref(&tp),
                    None,
                    ("204", None),
                ),
            ),
        )
        .path(
            "/v1/tenants/{tenant}/changes",
            PathItem::new(
                HttpMethod::Get,
                op(
                    "Changes after a revision, waiting up to `wait` for the next (410 when the \
                     change log was pruned past `since`: re-read, then follow from the current \
                     revision)"
                        .into(),
                    &[
                        tp.clone(),
                        param("since", ParameterIn::Query, "revision"),
                        param("wait", ParameterIn::Query, "e.g. 10s"),
                    ],
                    None,
                    ("200", None),
                ),
            ),
        );
    for (coll, what) in [("api-keys", "API key"), ("proxy-tokens", "proxy token")] {
        let base = format!("/v1/tenants/{{tenant}}/{coll}");
        paths = paths
            .path(
                &base,
                PathItem::new(
                    HttpMethod::Get,
                    op(
                        format!("List {what}s"),
                        std::slice::from_ref(&tp),
                        None,
                        ("200", None),
                    ),
                ),
            )
            .path(
                &base,
                PathItem::new(
                    HttpMethod::Post,
                    op(
                        format!("Create a {what} (its secret is shown once)"),
                        std::slice::from_ref(&tp),
                        Some("NewCredentialRequest"),
                        ("201", Some("CredentialView")),
                    ),
                ),
            )
            .path(
                format!("{base}/{{id}}"),
                PathItem::new(
                    HttpMethod::Delete,
                    op(
                        format!(
                            "Revoke a {what} (the xDS streams of a proxy token end, on every replica)"
                        ),
                        &[tp.clone(), param("id", ParameterIn::Path, "credential id")],
                        None,
                        ("204", None),
                    ),
                ),
            );
    }
    for kind in Kind::ALL {
        let (coll, item, scope) = if kind == Kind::Mesh {
            (
                "/v1/tenants/{tenant}/meshes".to_string(),
                "/v1/tenants/{tenant}/meshes/{name}".to_string(),
                vec![tp.clone()],
            )
        } else {
            let c = format!("/v1/tenants/{{tenant}}/meshes/{{mesh}}/{}", kind.plural());
            (
                c.clone(),
                format!("{c}/{{name}}"),
                vec![tp.clone(), mp.clone()],
            )
        };
        let s = spec_schema(kind);
        let mut with_page = scope.clone();
        with_page.extend(page.iter().cloned());
        let mut with_dry = scope.clone();
        with_dry.push(dry.clone());
        let mut item_params = scope.clone();
        item_params.push(np.clone());
        let mut item_write = item_params.clone();
        item_write.extend([dry.clone(), if_match.clone()]);
        let k = kind.singular();
        paths = paths
            .path(
                &coll,
                PathItem::new(
                    HttpMethod::Get,
                    op(
                        format!("List {}", kind.plural()),
                        &with_page,
                        None,
                        ("200", None),
                    ),
                ),
            )
            .path(
                &coll,
                PathItem::new(
                    HttpMethod::Post,
                    op(
                        format!("Create a {k} (body: name and {s})"),
                        &with_dry,
                        Some(s),
                        ("201", Some("ResourceView")),
                    ),
                ),
            )
            .path(
                &item,
                PathItem::new(
                    HttpMethod::Get,
                    op(
                        format!("Get a {k}"),
                        &item_params,
                        None,
                        ("200", Some("ResourceView")),
                    ),
                ),
            )
            .path(
                &item,
                PathItem::new(
                    HttpMethod::Put,
                    op(
                        format!("Create or replace a {k} (body: {s} under `spec`)"),
                        &item_write,
                        Some(s),
                        ("200", Some("ResourceView")),
                    ),
                ),
            )
            .path(
                &item,
                PathItem::new(
                    HttpMethod::Delete,
                    op(format!("Delete a {k}"), &item_write, None, ("204", None)),
                ),
            );
    }
    let components = ComponentsBuilder::new()
        .schema_from::<MeshSpec>()
        .schema_from::<ServiceSpec>()
        .schema_from::<EndpointSpec>()
        .schema_from::<RouteSpec>()
        .schema_from::<GatewaySpec>()
        .schema_from::<ResourceView>()
        .schema_from::<TenantSpec>()
        .schema_from::<TenantView>()
        .schema_from::<NewCredentialRequest>()
        .schema_from::<CredentialView>()
        .schema_from::<switchboard_model::FieldError>()
        .schema(
            "NewTenant",
            ObjectBuilder::new()
                .property("name", ObjectBuilder::new().schema_type(Type::String))
                .property("spec", Ref::from_schema_name("TenantSpec"))
                .required("name"),
        )
        .schema(
            "Problem",
            ObjectBuilder::new()
                .property("type", ObjectBuilder::new().schema_type(Type::String))
                .property("title", ObjectBuilder::new().schema_type(Type::String))
                .property("status", ObjectBuilder::new().schema_type(Type::Integer))
                .property("detail", ObjectBuilder::new().schema_type(Type::String))
                .property(
                    "errors",
                    utoipa::openapi::ArrayBuilder::new().items(Ref::from_schema_name("FieldError")),
                ),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Switchboard")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Multi-tenant xDS control plane: mesh configuration API",
                )),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

pub async fn serve() -> Response {
    axum::Json(openapi()).into_response()
}
