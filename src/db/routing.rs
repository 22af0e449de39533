//! The SQL routing needs: a message field's string, read in SQL per dialect, so a run never
//! claims rows it does not accept.

use super::Dialect;
use crate::routing::FieldPath;

/// JSON escapes PostgreSQL's `json` operators refuse: `\u0000` and lone UTF-16 surrogates (a
/// valid pair is fine). A regular expression over the column's text, as an E'' literal.
const PG_BAD_ESCAPES: &str = r"E'\\\\u0000|\\\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\\\u[dD][c-fC-F])|(?<!\\\\u[dD][89abAB][0-9a-fA-F]{2})\\\\u[dD][c-fC-F]'";

/// SQL that yields the string at this path of JSON column `column` (qualified, e.g.
/// `t.message`), or NULL; never an error, whatever the row holds. `pg_json` is the column's
/// type on PostgreSQL (`json` or `jsonb`).
pub fn field_sql(path: &FieldPath, d: Dialect, column: &str, pg_json: &str) -> String {
    match d {
        Dialect::Postgres => {
            // Quoted elements: an unquoted `null` would be SQL NULL in an array literal.
            let quoted: Vec<String> = path.segments().iter().map(|s| format!("\"{s}\"")).collect();
            let path = format!("'{{{}}}'", quoted.join(","));
            let get = format!(
                "CASE WHEN {pg_json}_typeof({column} #> {path}) = 'string' THEN NULLIF({column} #>> {path}, '') END"
            );
            if pg_json == "jsonb" {
                return format!("({get})");
            }
            // `json` keeps the text as written, and its operators fail the whole statement
            // on an escape text cannot hold (\u0000, a lone surrogate): such a row has no
            // topic rather than stopping every claim.
            format!("(CASE WHEN {column}::text !~ {PG_BAD_ESCAPES} THEN {get} END)")
        }
        Dialect::MySql => {
            let path = json_path(path);
            format!(
                "(CASE WHEN JSON_VALID({column}) THEN CASE WHEN JSON_TYPE(JSON_EXTRACT({column}, {path})) = 'STRING' \
                 THEN NULLIF(JSON_UNQUOTE(JSON_EXTRACT({column}, {path})), '') END END)"
            )
        }
        Dialect::Sqlite => {
            let path = json_path(path);
            format!(
                "(CASE WHEN json_valid({column}) THEN CASE WHEN json_type({column}, {path}) = 'text' \
                 THEN NULLIF(json_extract({column}, {path}), '') END END)"
            )
        }
    }
}

/// `'$."a"."b"'`: quoted keys, so `-` and `@` are plain characters.
fn json_path(path: &FieldPath) -> String {
    let keys: String = path
        .segments()
        .iter()
        .map(|s| format!(".\"{s}\""))
        .collect();
    format!("'${keys}'")
}
