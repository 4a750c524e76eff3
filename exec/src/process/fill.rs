//! Placeholders in args and env values: `{port}`, `{instance}`, `{service}`, `{branch}` and
//! `{env.NAME}`. Any other brace is left as written, so a script passed with `-c` keeps its own
//! braces; only an `{env.NAME}` whose NAME the instance's env lacks is an error.

use std::collections::BTreeMap;

/// The values placeholders stand for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Values<'a> {
    pub port: u16,
    pub instance: &'a str,
    pub service: &'a str,
    pub branch: &'a str,
    pub env: &'a BTreeMap<String, String>,
}

/// `text` with its placeholders filled, or the name of a missing `{env.NAME}`.
pub(crate) fn fill(text: &str, values: &Values<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        if let Some(close) = after.find('}') {
            let name = &after[..close];
            if !name.contains('{') {
                if let Some(value) = replacement(name, values)? {
                    out.push_str(&value);
                    rest = &after[close + 1..];
                    continue;
                }
            }
        }
        // Not a placeholder: keep the brace and look for one inside what follows.
        out.push('{');
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

fn replacement(name: &str, values: &Values<'_>) -> Result<Option<String>, String> {
    Ok(Some(match name {
        "port" => values.port.to_string(),
        "instance" => values.instance.to_owned(),
        "service" => values.service.to_owned(),
        "branch" => values.branch.to_owned(),
        _ => match name.strip_prefix("env.") {
            Some(var) => match values.env.get(var) {
                Some(value) => value.clone(),
                None => return Err(format!("placeholder {{{name}}}: {var} is not in the env")),
            },
            None => return Ok(None),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(env: &BTreeMap<String, String>) -> Values<'_> {
        Values {
            port: 4100,
            instance: "0123456789ab",
            service: "orders",
            branch: "feat/x",
            env,
        }
    }

    #[test]
    fn fills_known_placeholders_and_keeps_other_braces() {
        let env = BTreeMap::from([("DB".to_owned(), "pg://x".to_owned())]);
        let got = fill(
            "{port} {instance} {service} {branch} {env.DB} {x} {} {unclosed",
            &values(&env),
        );
        assert_eq!(
            got.as_deref(),
            Ok("4100 0123456789ab orders feat/x pg://x {x} {} {unclosed")
        );
    }

    #[test]
    fn finds_placeholders_inside_other_braces() {
        let env = BTreeMap::new();
        let got = fill(r#"{"port": {port}, "x": "{a{service}}"}"#, &values(&env));
        assert_eq!(got.as_deref(), Ok(r#"{"port": 4100, "x": "{aorders}"}"#));
    }

    #[test]
    fn a_missing_env_name_is_an_error() {
        let env = BTreeMap::new();
        let got = fill("--db={env.DB}", &values(&env));
        assert!(got.is_err_and(|e| e.contains("DB is not in the env")));
    }
}
