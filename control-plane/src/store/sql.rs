//! SQL assembled at run time (optional filters) with typed, bound values.
//!
//! `sqlx::QueryBuilder<Any>` writes `?` placeholders whatever the backend,
//! which PostgreSQL rejects (sqlx issue #3000, open in 0.8), so this is the
//! same push / push_bind shape writing `$n`, which both backends accept,
//! over sqlx's own typed argument buffer.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, Arguments, Encode, FromRow, Type};

pub(super) struct Sql {
    text: String,
    args: AnyArguments<'static>,
}

impl Sql {
    pub(super) fn new(init: &str) -> Self {
        Self {
            text: init.to_string(),
            args: AnyArguments::default(),
        }
    }

    /// Appends SQL text (never a value: values go through `push_bind`).
    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.text.push_str(sql);
        self
    }

    /// Binds `value` and appends its placeholder.
    pub(super) fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'static + Encode<'static, Any> + Type<Any>,
    {
        // `add` fails only for a value that cannot encode; the types bound
        // here (integers, floats, owned strings) always do.
        if self.args.add(value).is_ok() {
            self.text.push_str(&format!("${}", self.args.len()));
        }
        self
    }

    /// The statement with its arguments (taken: build a query once).
    pub(super) fn query(&mut self) -> sqlx::query::Query<'_, Any, AnyArguments<'_>> {
        sqlx::query_with(&self.text, std::mem::take(&mut self.args))
    }

    /// [`Sql::query`] mapping each row to `O`.
    pub(super) fn query_as<O>(&mut self) -> sqlx::query::QueryAs<'_, Any, O, AnyArguments<'_>>
    where
        O: for<'r> FromRow<'r, AnyRow>,
    {
        sqlx::query_as_with(&self.text, std::mem::take(&mut self.args))
    }

    /// [`Sql::query`] reading the first column of each row.
    pub(super) fn query_scalar<O>(
        &mut self,
    ) -> sqlx::query::QueryScalar<'_, Any, O, AnyArguments<'_>>
    where
        (O,): for<'r> FromRow<'r, AnyRow>,
    {
        sqlx::query_scalar_with(&self.text, std::mem::take(&mut self.args))
    }
}
