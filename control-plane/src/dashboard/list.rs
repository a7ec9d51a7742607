//! A listing's state lives in its URL (filters, sort, page), so every view
//! can be linked to and reloaded: reading it, and making the links that
//! change one part of it.

use crate::api::ApiError;

/// The query string as ordered pairs; repeated keys kept, empty values
/// (blank form fields) dropped.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pairs: Vec<(String, String)>,
}

/// The highest page number a listing accepts.
const MAX_PAGE: i64 = 100_000;

impl ListQuery {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        ListQuery { pairs }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A number from the query; a value that is not one is a 400 naming
    /// the field.
    pub fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("{key} {v:?} is not a number"))),
        }
    }

    /// The 1-based page number (`page`), 1 when absent.
    pub fn page(&self) -> Result<i64, ApiError> {
        self.page_of("page")
    }

    /// A 1-based page number under another key, for a page with more than
    /// one paged listing; 1 when absent.
    pub fn page_of(&self, key: &str) -> Result<i64, ApiError> {
        match self.get(key) {
            None => Ok(1),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|p| (1..=MAX_PAGE).contains(p))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("{key} {v:?} must be from 1 to {MAX_PAGE}"))
                }),
        }
    }

    /// `path` with this query, each key of `set` replaced by its value
    /// (`None` removes it); a change of anything but the page goes back to
    /// page 1.
    pub fn with(&self, path: &str, set: &[(&str, Option<&str>)]) -> String {
        let resets_page = set.iter().any(|(k, _)| *k != "page" && *k != "before");
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            let replaced = set.iter().any(|(s, _)| s == k);
            let paging = resets_page && (k == "page" || k == "before");
            if !replaced && !paging {
                out.append_pair(k, v);
            }
        }
        for (k, v) in set {
            if let Some(v) = v {
                out.append_pair(k, v);
            }
        }
        let q = out.finish();
        if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{q}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_change_one_part_of_the_state() {
        let q = ListQuery::parse(Some("q=fr&tag=&sort=updated&page=3&v=1&v=2"));
        assert_eq!(q.get("tag"), None);
        assert_eq!(q.all("v"), vec!["1", "2"]);
        assert_eq!(q.page().unwrap(), 3);
        assert_eq!(
            q.with("/models", &[("page", Some("4"))]),
            "/models?q=fr&sort=updated&v=1&v=2&page=4"
        );
        // A new sort starts again at page 1.
        assert_eq!(
            q.with("/models", &[("sort", Some("name"))]),
            "/models?q=fr&v=1&v=2&sort=name"
        );
        assert_eq!(ListQuery::default().with("/audit", &[]), "/audit");
        assert!(ListQuery::parse(Some("page=0")).page().is_err());
        assert!(ListQuery::parse(Some("min=x")).number("min").is_err());
        assert_eq!(
            ListQuery::parse(Some("min=0.9")).number("min").unwrap(),
            Some(0.9)
        );
    }
}
