//! Lock URLs: `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?key=value&...]`.
//!
//! A small parser of our own, because several backends take a comma-separated host list
//! (`redlock://h1,h2,h3`, `zk://h1:2181,h2:2181/locks`) that general URL parsers reject. Passwords are
//! kept out of every `Display` and `Debug` form.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// A parsed lock URL. Its `Display` and `Debug` forms never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct LockUrl {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<String>,
    path: String,
    query: Vec<(String, String)>,
    redacted: String,
}

impl LockUrl {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when there is no `scheme:`, a percent-escape is malformed, or the
    /// query is not `key=value` pairs. The error shows the URL with its password redacted.
    ///
    /// # Examples
    ///
    /// ```
    /// use interlock::LockUrl;
    /// let u = LockUrl::parse("redis://app:s3cret@127.0.0.1:6379/0?lease=5s").unwrap();
    /// assert_eq!(u.scheme(), "redis");
    /// assert_eq!(u.password(), Some("s3cret"));
    /// assert_eq!(u.to_string(), "redis://app:***@127.0.0.1:6379/0?lease=5s");
    /// ```
    pub fn parse(url: &str) -> Result<Self> {
        let redacted = redact(url);
        let bad = |reason: &str| Error::InvalidUrl { url: redacted.clone(), reason: reason.to_owned() };
        let url = url.trim();
        let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("missing `scheme:` (e.g. file:///var/lock/app)"))?;
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(bad("the scheme must be letters, digits, `+`, `-` or `.`"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = if let Some(after) = before_query.strip_prefix("//") {
            match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        } else {
            ("", before_query)
        };
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (non_empty(decode(u).map_err(&bad)?), Some(decode(p).map_err(&bad)?)),
                None => (non_empty(decode(ui).map_err(&bad)?), None),
            },
        };
        let hosts =
            if hostlist.is_empty() { Vec::new() } else { hostlist.split(',').map(str::to_owned).collect::<Vec<_>>() };
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(bad("empty host in the host list"));
        }
        let path = decode(path).map_err(&bad)?;
        let mut pairs = Vec::new();
        if let Some(q) = query {
            for part in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').ok_or_else(|| bad("query options must be key=value"))?;
                pairs.push((decode(k).map_err(&bad)?, decode(v).map_err(&bad)?));
            }
        }
        Ok(LockUrl { scheme: scheme.to_ascii_lowercase(), user, password, hosts, path, query: pairs, redacted })
    }

    /// The scheme, lowercased (`file`, `memory`, `redis`, ...).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, if one was given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, if one was given. Never printed by interlock.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The hosts as written (`host[:port]` each).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The percent-decoded path, including its leading `/` (empty when there is none).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The decoded `key=value` query pairs, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The URL as written, with the password and the values of options whose names look secret
    /// replaced by `***` (see [`redact`]).
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// An [`Error::InvalidUrl`] for this URL.
    pub fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidUrl { url: self.redacted.clone(), reason: reason.into() }
    }

    /// The query options, for a backend to take the keys it knows; see [`UrlOptions`].
    pub fn options(&self) -> UrlOptions<'_> {
        UrlOptions { url: self, taken: vec![false; self.query.len()] }
    }
}

impl fmt::Display for LockUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for LockUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockUrl").field(&self.redacted).finish()
    }
}

/// The query options of a [`LockUrl`]: each backend takes the keys it knows, and
/// [`UrlOptions::finish`] refuses any key left over, so a misspelt option is an error rather than
/// silently ignored.
#[derive(Debug)]
pub struct UrlOptions<'a> {
    url: &'a LockUrl,
    taken: Vec<bool>,
}

impl UrlOptions<'_> {
    /// Takes the last value given for `key`.
    pub fn take(&mut self, key: &str) -> Option<&str> {
        let mut found = None;
        for (i, (k, v)) in self.url.query.iter().enumerate() {
            if k == key {
                self.taken[i] = true;
                found = Some(v.as_str());
            }
        }
        found
    }

    /// Takes `key` and parses it as a duration (see [`parse_duration`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] when the value is not a duration.
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        let url = self.url;
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_duration(v).map(Some).map_err(|why| url.invalid(format!("option `{key}`: {why}"))),
        }
    }

    /// Fails if any option was not taken (options every backend takes, [`COMMON_OPTIONS`],
    /// are taken by the core and accepted here).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] naming the unknown keys and the ones this backend knows.
    pub fn finish(self, known: &[&str]) -> Result<()> {
        let unknown: Vec<&str> = self
            .url
            .query
            .iter()
            .zip(&self.taken)
            .filter(|((k, _), t)| !**t && !COMMON_OPTIONS.contains(&k.as_str()))
            .map(|((k, _), _)| k.as_str())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let known = known.iter().chain(COMMON_OPTIONS).copied().collect::<Vec<_>>().join(", ");
        Err(self.url.invalid(format!("unknown option `{}` (this backend knows: {known})", unknown.join("`, `"))))
    }
}

/// The option every URL may carry: how long `connect` waits for the backend (a duration).
pub const CONNECT_TIMEOUT: &str = "connect_timeout";

/// Options every backend accepts, taken by the core rather than the backend.
pub const COMMON_OPTIONS: &[&str] = &[CONNECT_TIMEOUT];

/// The URL a program uses when it names none and `$INTERLOCK_URL` is unset or blank: the file
/// backend in the private per-user default directory (see [`crate::connect`]).
pub const DEFAULT_URL: &str = "file://";

/// The URL a program uses when it names none: a non-blank `$INTERLOCK_URL`, else [`DEFAULT_URL`].
/// The `interlock` command and the Python package both resolve their default this way, so a
/// script and the program it runs agree on where their locks live.
///
/// # Examples
///
/// ```
/// let url = interlock::url::default_url();
/// assert!(url == interlock::url::DEFAULT_URL || std::env::var("INTERLOCK_URL").is_ok());
/// ```
pub fn default_url() -> String {
    match std::env::var("INTERLOCK_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => DEFAULT_URL.to_owned(),
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// Percent-decodes `s` as UTF-8.
fn decode(s: &str) -> std::result::Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent-escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad percent-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-escapes do not decode to UTF-8")
}

/// Replaces the password of a URL-like string, and the values of query options whose names look
/// secret, with `***`, even when the rest does not parse.
///
/// Anything that looks like `user:password@` is hidden, also without `://` (`mysql//root:pw@db`,
/// `memory:u:pw@x`, `root:pw@db`): from the first `:` of the userinfo to the LAST `@` of the
/// string, the text becomes `***`. The userinfo starts after a leading `scheme://`, else at the
/// start of the string. This may hide more than the password of an odd string (a scheme or user
/// name without `//`, a `:` and then `@` in a path), never less.
///
/// Then, after the first `?` that is left, each `name=value` option whose name (percent-decoded,
/// any case) contains `pass`, `pwd`, `secret`, `token`, `key`, `auth`, `credential` or `private`
/// (`password`, `passwd`, `auth_token`, `api_key`, `client_secret`, ...) shows `name=***`: such
/// an option is refused as unknown by every backend but its value is still not echoed. The redis
/// backends' own `key` (the TLS client key's file) is hidden too: a path is no secret, but a URL
/// that shows it is not worth a rule with exceptions.
///
/// # Examples
///
/// ```
/// use interlock::url::redact;
/// assert_eq!(redact("mysql://root:hunter2@db:3306/app"), "mysql://root:***@db:3306/app");
/// assert_eq!(redact("mysql//root:hunter2@db"), "mysql//root:***@db");
/// assert_eq!(redact("memory:u:hunter2@x"), "memory:***@x");
/// assert_eq!(redact("file:///tmp/x"), "file:///tmp/x");
/// assert_eq!(redact("redis://h/0?lease=5s&auth_token=hunter2"), "redis://h/0?lease=5s&auth_token=***");
/// ```
pub fn redact(url: &str) -> String {
    redact_secret_options(&redact_userinfo(url))
}

/// Fragments of option names whose values [`redact`] hides.
const SECRET_NAME_PARTS: &[&str] = &["pass", "pwd", "secret", "token", "key", "auth", "credential", "private"];

/// True when a query option named `name` may carry a secret (see [`redact`]).
fn looks_secret(name: &str) -> bool {
    let name = decode(name).unwrap_or_else(|_| name.to_owned()).to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

/// The query part of [`redact`]: `name=***` for every option after the first `?` whose name
/// looks secret.
fn redact_secret_options(url: &str) -> String {
    let Some((before, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let options: Vec<String> = query
        .split('&')
        .map(|option| match option.split_once('=') {
            Some((name, _)) if looks_secret(name) => format!("{name}=***"),
            _ => option.to_owned(),
        })
        .collect();
    format!("{before}?{}", options.join("&"))
}

/// The userinfo part of [`redact`].
fn redact_userinfo(url: &str) -> String {
    // A password should be percent-encoded, but one with a raw `/`, `?`, `:` or `@` must not leak
    // either: the userinfo runs up to the LAST `@`, the password from its first `:`.
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = match url[..at].split_once("://") {
        Some((scheme, _)) if is_scheme(scheme) => scheme.len() + 3,
        // Without a leading `scheme://` nothing says where a user name would start: from the
        // first `:` on, everything up to the `@` may be a password.
        _ => 0,
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// True for a URL scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Parses a duration: a number with an optional unit `ms`, `s`, `m`, `h` (`us` too); a bare number
/// is seconds. Fractions are allowed (`1.5s`, `0.25`).
///
/// # Errors
///
/// A one-line reason when the text is not a finite, non-negative duration below 100 years.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use interlock::url::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("-1s").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("`{text}`: unknown unit `{other}` (use ms, s, m or h)")),
    };
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 10s, 1.5)"))?;
    secs_to_duration(value * scale).map_err(|why| format!("`{text}`: {why}"))
}

/// Converts seconds to a [`Duration`], refusing negative, non-finite and absurd (≥ 100 years) values.
///
/// # Errors
///
/// A one-line reason.
pub fn secs_to_duration(secs: f64) -> std::result::Result<Duration, String> {
    const MAX_SECS: f64 = 100.0 * 365.0 * 24.0 * 3600.0;
    if !secs.is_finite() || secs < 0.0 {
        return Err("must be a finite, non-negative number of seconds".into());
    }
    if secs >= MAX_SECS {
        return Err("must be less than 100 years".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_we_document() {
        let u = LockUrl::parse("file:///var/lock/my%20app").unwrap();
        assert_eq!((u.scheme(), u.path(), u.hosts().len()), ("file", "/var/lock/my app", 0));
        let u = LockUrl::parse("file://").unwrap();
        assert_eq!(u.path(), "");
        let u = LockUrl::parse("memory://").unwrap();
        assert_eq!(u.scheme(), "memory");
        let u = LockUrl::parse("redlock://h1:6379,h2:6379,h3:6379?lease=2s").unwrap();
        assert_eq!(u.hosts(), ["h1:6379", "h2:6379", "h3:6379"]);
        assert_eq!(u.query(), [("lease".to_string(), "2s".to_string())]);
        let u = LockUrl::parse("zk://u:p@h1:2181,h2:2181/locks").unwrap();
        assert_eq!((u.user(), u.password(), u.path()), (Some("u"), Some("p"), "/locks"));
        let u = LockUrl::parse("REDIS://:pw@h/0").unwrap();
        assert_eq!((u.scheme(), u.user(), u.password()), ("redis", None, Some("pw")));
    }

    #[test]
    fn refuses_malformed_urls_without_leaking_passwords() {
        for bad in [
            "no-scheme",
            "://x",
            "1abc://x",
            "redis://u:secretpw@h/%zz",
            "redis://u:secretpw@h,,h2/0",
            "redis://u:secretpw@h/0?novalue",
        ] {
            let e = LockUrl::parse(bad).unwrap_err();
            let s = e.to_string();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{bad}");
            assert!(!s.contains("secretpw"), "{s}");
            assert!(!s.contains('\n'));
        }
    }

    #[test]
    fn display_and_debug_redact() {
        let u = LockUrl::parse("mysql://root:topsecret@127.0.0.1:3306/db").unwrap();
        assert!(!format!("{u} {u:?}").contains("topsecret"));
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("redis://user@h"), "redis://user@h");
        assert_eq!(redact("not a url"), "not a url");
        // Unencoded `/`, `?` and `@` in a password still do not leak.
        for raw in ["redis://u:pa/ss@h/0?bad", "redis://u:pa?ss@h/0", "redis://u:p@ss@h/0", "mysql://u:a/b?c@d@h:1/x"] {
            let r = redact(raw);
            assert!(
                !r.contains("pa/") && !r.contains("pa?") && !r.contains("p@") && !r.contains("a/b"),
                "{raw} -> {r}"
            );
            let e = LockUrl::parse(raw).map(|u| u.to_string()).unwrap_or_else(|e| e.to_string());
            assert!(!e.contains("pa/ss") && !e.contains("pa?ss") && !e.contains("p@ss") && !e.contains("a/b?c"), "{e}");
        }
    }

    #[test]
    fn redacts_user_password_without_a_double_slash() {
        assert_eq!(redact("mysql//root:hunter2@db"), "mysql//root:***@db");
        assert_eq!(redact("root:hunter2@db"), "root:***@db");
        // Without `scheme://`, a scheme or user name may be hidden with the password.
        assert_eq!(redact("memory:u:hunter2@x"), "memory:***@x");
        assert_eq!(redact("mysql:/root:hunter2@db/app"), "mysql:***@db/app");
        assert_eq!(redact("memory:hunter2@x"), "memory:***@x");
        // A user without a password is shown.
        assert_eq!(redact("mysql//root@db"), "mysql//root@db");
        for raw in [
            "mysql//root:hunter2@db",
            "memory:u:hunter2@x",
            "redis:u:hunter2@h:1/0",
            "u:hunter2@x://y",
            "a:hun://ter2@h",
        ] {
            assert!(!redact(raw).contains("hunter2"), "{raw} -> {}", redact(raw));
            let shown = LockUrl::parse(raw).map(|u| format!("{u} {u:?}")).unwrap_or_else(|e| e.to_string());
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    /// Whatever surrounds it, a `user:password@` never shows its password.
    #[test]
    fn redaction_holds_for_anything_that_looks_like_user_password_at() {
        let prefixes = [
            "",
            "redis://",
            "redis:",
            "redis:/",
            "mysql//",
            "//",
            "'redis://",
            "a:b/",
            "memory:x",
            "x://y/",
            "file:///",
            "1x:",
            " ",
            "a:b://",
        ];
        let users = ["", "root", "u-1", "a.b", "a:b"];
        let secrets = ["hunter2", "hun/ter2", "hun?ter2", "hun@ter2", "hun:ter2", "hun://ter2", "hunter2%40"];
        let suffixes = ["", "db", "db:3306/app", "h/0?x=1", "h/p@q", "h,h2/0", "x://y", "h'"];
        for prefix in prefixes {
            for user in users {
                for secret in secrets {
                    for suffix in suffixes {
                        let raw = format!("{prefix}{user}:{secret}@{suffix}");
                        let shown = redact(&raw);
                        for part in secret.split(['/', '?', '@', ':']).filter(|p| !p.is_empty()) {
                            assert!(!shown.contains(part), "{raw:?} -> {shown:?}");
                        }
                        let parsed =
                            LockUrl::parse(&raw).map(|u| format!("{u} {u:?}")).unwrap_or_else(|e| e.to_string());
                        assert!(!parsed.contains("hun"), "{raw:?} -> {parsed:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn secret_looking_options_are_redacted() {
        for (raw, shown) in [
            ("memory://?password=hunter2", "memory://?password=***"),
            ("redis://h/0?lease=5s&PASSWD=hunter2&prefix=app", "redis://h/0?lease=5s&PASSWD=***&prefix=app"),
            ("redis://h?auth_token=hunter2", "redis://h?auth_token=***"),
            ("redis://h?Api-Key=hunter2&x-Secret=hunter2", "redis://h?Api-Key=***&x-Secret=***"),
            ("rediss://h?ca=/ca.pem&cert=/c.pem&key=/c.key", "rediss://h?ca=/ca.pem&cert=/c.pem&key=***"),
            ("redis://h?%70assword=hunter2", "redis://h?%70assword=***"),
            (
                "memory://?pass=a&pwd=b&credentials=c&private=d&token",
                "memory://?pass=***&pwd=***&credentials=***&private=***&token",
            ),
            ("redis://u:hunter2@h/0?token=hunter2", "redis://u:***@h/0?token=***"),
            ("memory://?lease=1s&renew=300ms", "memory://?lease=1s&renew=300ms"),
        ] {
            assert_eq!(redact(raw), shown, "{raw}");
        }
        // Values with the URL's own delimiters in them, raw or encoded, never show.
        for value in ["hunter2", "hun@ter2", "hun:ter2@x", "hun?ter2", "hun=ter2", "hun%26ter2", "hun/ter2"] {
            for raw in [
                format!("memory://?password={value}"),
                format!("redis://h/0?lease=1s&token={value}"),
                format!("redis://u@h/0?SECRET={value}&lease=1s"),
                format!("memory:?key={value}"),
            ] {
                let shown = redact(&raw);
                assert!(!shown.contains("hun"), "{raw:?} -> {shown:?}");
                let parsed = LockUrl::parse(&raw).map(|u| format!("{u} {u:?}")).unwrap_or_else(|e| e.to_string());
                assert!(!parsed.contains("hun"), "{raw:?} -> {parsed:?}");
            }
        }
        // The unknown-option error names the option, not its value.
        let u = LockUrl::parse("memory://?password=hunter2").unwrap();
        let e = u.options().finish(&["lease"]).unwrap_err().to_string();
        assert!(e.contains("unknown option `password`") && !e.contains("hunter2"), "{e}");
        assert_eq!(
            e,
            "invalid lock URL `memory://?password=***`: unknown option `password` (this backend knows: lease, connect_timeout)"
        );
    }

    #[test]
    fn unknown_options_are_refused() {
        let u = LockUrl::parse("memory://?lease=1s&leese=2s").unwrap();
        let mut o = u.options();
        assert_eq!(o.take_duration("lease").unwrap(), Some(Duration::from_secs(1)));
        let e = o.finish(&["lease"]).unwrap_err().to_string();
        assert!(e.contains("leese") && e.contains("knows: lease, connect_timeout"), "{e}");
        // Every backend accepts the common options (the core takes them).
        let u = LockUrl::parse("memory://?connect_timeout=2s").unwrap();
        assert!(u.options().finish(&[]).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        for bad in ["", "s", "-1", "1e400", "nan", "5 parsecs", "1000000000000"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
