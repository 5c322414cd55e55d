//! The API's routes: one table ([`ROUTES`]) that the router matches against and that the
//! OpenAPI document is checked against.

use super::body::percent_decode;

/// Every `(method, path template)` the API answers. `{name}` is one non-empty path segment,
/// percent-decoded.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/people"),
    ("GET", "/v1/people"),
    ("GET", "/v1/people/{key}"),
    ("PUT", "/v1/people/{key}"),
    ("DELETE", "/v1/people/{key}"),
    ("POST", "/v1/searches"),
    ("POST", "/v1/exceptions/{tguid}/treatment"),
    ("POST", "/v1/reviews/{tguid}"),
    ("GET", "/v1/transactions/{tguid}"),
];

/// A request the router understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Enroll,
    People,
    Person(String),
    Update(String),
    DeletePerson(String),
    Search,
    Treat(String),
    Review(String),
    Transaction(String),
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    NotFound,
    /// The path exists; these are the methods it takes.
    Method(Vec<&'static str>),
    /// A path segment is not valid percent-encoded UTF-8.
    BadSegment,
}

/// The route of `method path` (`path` without its query).
pub fn resolve(method: &str, path: &str) -> Result<Route, Unrouted> {
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some(p) => p.split('/').collect(),
        None => return Err(Unrouted::NotFound),
    };
    let mut allowed = Vec::new();
    for (m, template) in ROUTES {
        let Some(param) = match_template(template, &segs) else {
            continue;
        };
        if *m != method {
            allowed.push(*m);
            continue;
        }
        let param = match param {
            Some(raw) => Some(percent_decode(raw).ok_or(Unrouted::BadSegment)?),
            None => None,
        };
        return Ok(route_of(m, template, param.unwrap_or_default()));
    }
    if allowed.is_empty() {
        Err(Unrouted::NotFound)
    } else {
        Err(Unrouted::Method(allowed))
    }
}

/// `Some(the raw parameter, if the template has one)` when `segs` fit `template`.
fn match_template<'a>(template: &str, segs: &[&'a str]) -> Option<Option<&'a str>> {
    let t: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    if t.len() != segs.len() {
        return None;
    }
    let mut param = None;
    for (want, got) in t.iter().zip(segs) {
        if want.starts_with('{') {
            if got.is_empty() {
                return None;
            }
            param = Some(*got);
        } else if want != got {
            return None;
        }
    }
    Some(param)
}

fn route_of(method: &str, template: &str, p: String) -> Route {
    match (method, template) {
        ("POST", "/v1/people") => Route::Enroll,
        ("GET", "/v1/people") => Route::People,
        ("GET", "/v1/people/{key}") => Route::Person(p),
        ("PUT", "/v1/people/{key}") => Route::Update(p),
        ("DELETE", "/v1/people/{key}") => Route::DeletePerson(p),
        ("POST", "/v1/searches") => Route::Search,
        ("POST", "/v1/exceptions/{tguid}/treatment") => Route::Treat(p),
        ("POST", "/v1/reviews/{tguid}") => Route::Review(p),
        _ => Route::Transaction(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_resolves() {
        assert_eq!(resolve("POST", "/v1/people"), Ok(Route::Enroll));
        assert_eq!(resolve("GET", "/v1/people"), Ok(Route::People));
        assert_eq!(
            resolve("PUT", "/v1/people/J%C3%BCrgen%20M%2F1"),
            Ok(Route::Update("Jürgen M/1".into()))
        );
        assert_eq!(
            resolve("DELETE", "/v1/people/a"),
            Ok(Route::DeletePerson("a".into()))
        );
        assert_eq!(
            resolve("GET", "/v1/people/a"),
            Ok(Route::Person("a".into()))
        );
        assert_eq!(resolve("POST", "/v1/searches"), Ok(Route::Search));
        assert_eq!(
            resolve("POST", "/v1/exceptions/t1/treatment"),
            Ok(Route::Treat("t1".into()))
        );
        assert_eq!(
            resolve("POST", "/v1/reviews/t1"),
            Ok(Route::Review("t1".into()))
        );
        assert_eq!(
            resolve("GET", "/v1/transactions/t1"),
            Ok(Route::Transaction("t1".into()))
        );
    }

    #[test]
    fn unknown_paths_methods_and_bad_segments() {
        for p in [
            "/",
            "/v1",
            "/v1/people/",
            "/v1/people/a/b",
            "/v2/people",
            "v1/people",
        ] {
            assert_eq!(resolve("GET", p), Err(Unrouted::NotFound), "{p}");
        }
        assert_eq!(
            resolve("PATCH", "/v1/people/a"),
            Err(Unrouted::Method(vec!["GET", "PUT", "DELETE"]))
        );
        assert_eq!(
            resolve("GET", "/v1/searches"),
            Err(Unrouted::Method(vec!["POST"]))
        );
        assert_eq!(resolve("GET", "/v1/people/%ff"), Err(Unrouted::BadSegment));
    }
}
