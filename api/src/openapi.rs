//! The OpenAPI 3 document, generated from the router so that the two cannot drift: every
//! operation is declared once, as a [`Route`] (method, path, documentation, handler), and
//! [`assemble`] registers each with axum and in the document alike (utoipa-axum). Schemas
//! come from the model's types (utoipa derives) and travel with the routes that use them;
//! resource paths come from the kind registry, so a new kind or field shows up by itself.

use crate::AppState;
use axum::Extension;
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use std::borrow::Cow;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, RefOr, Required, ResponseBuilder, Type,
};
use utoipa_axum::PathItemExt;
use utoipa_axum::router::OpenApiRouter;

pub(crate) type Parameter = utoipa::openapi::path::Parameter;

/// One operation of the API: the router serves `handler` for exactly `method` on `path`, and
/// the document describes it with `operation` and `schemas`.
pub(crate) struct Route {
    pub method: HttpMethod,
    pub path: String,
    pub operation: Operation,
    pub schemas: Vec<(String, RefOr<Schema>)>,
    pub handler: MethodRouter<AppState>,
}

impl Route {
    pub fn new<H, T>(
        method: HttpMethod,
        path: impl Into<String>,
        operation: Operation,
        handler: H,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let handler = axum::routing::on(method.to_method_filter(), handler);
        Self {
            method,
            path: path.into(),
            operation,
            schemas: vec![],
            handler,
        }
    }

    /// Adds `S`'s schema (under its name), and those it refers to, to the components.
    pub fn schema<S: ToSchema>(mut self) -> Self {
        S::schemas(&mut self.schemas);
        self.schema_named(S::name(), S::schema())
    }

    pub fn schema_named(
        mut self,
        name: impl Into<Cow<'static, str>>,
        schema: impl Into<RefOr<Schema>>,
    ) -> Self {
        self.schemas.push((name.into().into_owned(), schema.into()));
        self
    }
}

/// Registers every route with axum and in the document.
pub(crate) fn assemble(routes: Vec<Route>) -> OpenApiRouter<AppState> {
    let base = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Switchboard")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Multi-tenant xDS control plane: mesh configuration API",
                )),
        )
        .components(Some(
            ComponentsBuilder::new()
                .schema_from::<switchboard_model::FieldError>()
                .schema(
                    "Problem",
                    ObjectBuilder::new()
                        .property("type", ObjectBuilder::new().schema_type(Type::String))
                        .property("title", ObjectBuilder::new().schema_type(Type::String))
                        .property("status", ObjectBuilder::new().schema_type(Type::Integer))
                        .property("detail", ObjectBuilder::new().schema_type(Type::String))
                        .property(
                            "errors",
                            utoipa::openapi::ArrayBuilder::new()
                                .items(Ref::from_schema_name("FieldError")),
                        )
                        .property(
                            "quota",
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .description(Some("on a 429: the quota exceeded")),
                        )
                        .property(
                            "limit",
                            ObjectBuilder::new()
                                .schema_type(Type::Integer)
                                .description(Some("on a 429: the quota's value")),
                        )
                        .property(
                            "current",
                            ObjectBuilder::new()
                                .schema_type(Type::Integer)
                                .description(Some("on a 429 of a count quota: how many are held")),
                        ),
                )
                .build(),
        ))
        .build();
    routes
        .into_iter()
        .fold(OpenApiRouter::with_openapi(base), |api, r| {
            let paths = PathsBuilder::new()
                .path(&r.path, PathItem::new(r.method, r.operation))
                .build();
            api.routes((r.schemas, paths, r.handler))
        })
}

/// `GET /v1/openapi.json`.
pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(
        HttpMethod::Get,
        "/v1/openapi.json",
        op("This document".into(), &[], None, ("200", None)),
        serve,
    )]
}

/// The document this router was assembled with (`crate::router` adds it as an extension).
async fn serve(Extension(doc): Extension<Arc<OpenApi>>) -> Response {
    axum::Json(doc.as_ref()).into_response()
}

pub(crate) fn param(name: &str, at: ParameterIn, desc: &str) -> Parameter {
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

/// `{tenant}`, the first segment of every tenant-scoped path.
pub(crate) fn tenant_param() -> Parameter {
    param("tenant", ParameterIn::Path, "tenant name")
}

/// `?dryRun`: validate everything, write nothing.
pub(crate) fn dry_run_param() -> Parameter {
    param(
        "dryRun",
        ParameterIn::Query,
        "validate everything, write nothing",
    )
}

/// `?pageSize` and `?pageToken` of a listing.
pub(crate) fn page_params() -> [Parameter; 2] {
    [
        param("pageSize", ParameterIn::Query, "1 to 1000, default 100"),
        param(
            "pageToken",
            ParameterIn::Query,
            "nextPageToken of the previous page",
        ),
    ]
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

/// An operation: its summary, parameters, request body schema (JSON or YAML) and success
/// status with its body schema; every operation may also answer a 4XX problem.
pub(crate) fn op(
    summary: String,
    params: &[Parameter],
    body: Option<&str>,
    ok: (&str, Option<&str>),
) -> Operation {
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
