//! `meta.k8s.io/v1` `Status` objects: every error the stand-in returns is one, with the
//! `reason` and `code` upstream uses (`k8s.io/apimachinery/pkg/api/errors`), because
//! kube-rs parses them into `kube::Error::Api` and callers branch on `reason`/`code`.

use serde_json::{Value, json};

/// An API error: HTTP code, `reason`, message and optional `details`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// The identity of the object an error is about, for `Status.details`:
/// `group` and `kind` are the API group and the resource (plural), as upstream fills them.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub name: &'a str,
}

impl Subject<'_> {
    /// `secrets` or `kustomizations.kustomize.toolkit.fluxcd.io`, as messages name them.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    fn details(&self) -> Value {
        let mut d = json!({"name": self.name, "kind": self.resource});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn not_found(s: Subject<'_>) -> Self {
        Self::new(404, "NotFound", format!("{} \"{}\" not found", s.qualified(), s.name))
            .with_details(s.details())
    }

    /// The API server's answer for a path it serves nothing at (an unknown group,
    /// version or resource, e.g. a CRD's kind before the CRD is established).
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource").with_details(
            json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}),
        )
    }

    pub fn already_exists(s: Subject<'_>) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", s.qualified(), s.name))
            .with_details(s.details())
    }

    /// Optimistic-concurrency failure (a stale `resourceVersion` or a failed precondition).
    pub fn conflict(s: Subject<'_>, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{}\": {why}", s.qualified(), s.name),
        )
        .with_details(s.details())
    }

    /// Server-side apply conflicts: one cause per field, as upstream reports them.
    pub fn apply_conflicts(s: Subject<'_>, conflicts: &[(String, String)]) -> Self {
        let n = conflicts.len();
        let list: Vec<String> =
            conflicts.iter().map(|(m, f)| format!("conflict with \"{m}\": {f}")).collect();
        let message = if n == 1 {
            format!("Apply failed with 1 conflict: {}", list.join("\n"))
        } else {
            format!("Apply failed with {n} conflicts: {}", list.join("\n"))
        };
        let mut details = s.details();
        details["causes"] = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
            .collect();
        Self::new(409, "Conflict", message).with_details(details)
    }

    pub fn invalid(s: Subject<'_>, field: &str, why: &str) -> Self {
        let mut details = s.details();
        details["causes"] = json!([{"reason": "FieldValueInvalid", "message": why, "field": field}]);
        Self::new(422, "Invalid", format!("{} \"{}\" is invalid: {field}: {why}", s.qualified(), s.name))
            .with_details(details)
    }

    /// `422 Invalid` exactly as upstream's `errors.NewInvalid` builds it
    /// (k8s.io/apimachinery/pkg/api/errors): the message names the object by its kind
    /// and group (`CustomResourceDefinition.apiextensions.k8s.io "x" is invalid: field:
    /// detail`), `details.kind` is the kind, one cause per field.
    pub fn invalid_object(group: &str, kind: &str, name: &str, field: &str, detail: &str) -> Self {
        let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let mut details = json!({"name": name, "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}]});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Self::new(422, "Invalid", format!("{qualified} \"{name}\" is invalid: {field}: {detail}"))
            .with_details(details)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn too_many_requests(message: impl Into<String>, causes: Value) -> Self {
        Self::new(429, "TooManyRequests", message).with_details(json!({"causes": causes}))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `410 Gone` a watch from a compacted `resourceVersion` ends with.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// An error with a caller-chosen code, for injected failures.
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Gone",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected failure (stand-in test hook): HTTP {code}"))
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// A `Status` with `status: Success`, as delete and eviction return it.
pub fn success(code: u16, details: Option<Value>) -> Value {
    let mut s =
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}
