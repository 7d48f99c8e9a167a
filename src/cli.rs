//! The binary's subcommands besides serving: `token` (mint an access token
//! with AUTH_SECRET), `hash-password` (a bcrypt hash for BASIC_AUTH) and
//! `help`.
//!
//! Owns: the command line (a small hand parser: two subcommands and five
//! flags do not need a parser crate), their output and exit codes (0 done,
//! 1 could not run, 2 bad usage or a bad value, naming it).
//!
//! Does not own: what a token means or how it is signed
//! (`switchyard::auth::token`), what a pattern is (`hub::topics`), or
//! serving (`main`).

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use switchyard::auth::token::{self, Claims, MAX_TOKEN_PATTERNS};
use switchyard::config::MIN_AUTH_SECRET_BYTES;
use switchyard::hub::topics::Pattern;

pub const USAGE: &str = "\
switchyard: one port for a real-time dashboard (WebSocket broadcaster, health
check and reverse proxy), configured by environment variables (listed below).

Usage:
  switchyard                  serve
  switchyard token --subscribe PATTERNS [--publish PATTERNS] [--admin]
                   --ttl DURATION [--sub NAME]
                              print an access token signed with AUTH_SECRET
                              (read from the environment)
  switchyard hash-password    read a password from stdin (one line) and print
                              its bcrypt hash, for BASIC_AUTH=user:HASH
  switchyard help             this text

token options:
  --subscribe PATTERNS   topic patterns the holder may read, e.g. 'positions/#'
                         (repeat the flag, or separate with commas)
  --publish PATTERNS     topic patterns the holder may publish to, e.g. 'orders/+'
  --admin                every topic, the console and metrics
  --ttl DURATION         how long it is valid: 30s, 15m, 1h, 7d ...
  --sub NAME             who holds it (shown in the gateway's logs)

Exit codes: 0 done, 1 could not run, 2 bad usage or a bad value.
";

/// bcrypt cost of `hash-password` (2^10 rounds: ~50-100 ms per check on a
/// server core, what `htpasswd -B` uses by default too).
pub const HASH_COST: u32 = 10;

/// bcrypt reads at most 72 bytes (71 and a terminating zero); a longer
/// password would be cut silently, so it is refused.
const MAX_PASSWORD_BYTES: usize = 71;

/// What the command line asks for.
pub enum Command {
    Serve,
    /// A subcommand that ran, with its exit code.
    Ran(ExitCode),
}

/// Runs a subcommand when the arguments name one.
pub fn run(mut args: impl Iterator<Item = OsString>) -> Command {
    let Some(first) = args.next() else {
        return Command::Serve;
    };
    let rest: Result<Vec<String>, OsString> = args.map(OsString::into_string).collect();
    let (Some(first), Ok(rest)) = (first.to_str(), rest) else {
        return Command::Ran(usage_error("arguments must be valid UTF-8"));
    };
    Command::Ran(match first {
        "serve" if rest.is_empty() => return Command::Serve,
        "token" => token(&rest),
        "hash-password" if rest.is_empty() => hash_password(),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            println!(
                "\nEnvironment variables, with their defaults (docs/configuration.md has more):"
            );
            print!("{}", switchyard::config::help_text());
            ExitCode::SUCCESS
        }
        "--version" | "-V" | "version" => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        "serve" | "hash-password" => usage_error(&format!("{first} takes no arguments")),
        other => usage_error(&format!("unknown command {other:?}")),
    })
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("switchyard: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// A bad value for a subcommand: named on stderr, exit 2.
fn refuse(command: &str, message: &str) -> ExitCode {
    eprintln!("switchyard {command}: {message}");
    ExitCode::from(2)
}

/// The flags of `token`, as given.
#[derive(Debug, Default)]
struct TokenRequest {
    subscribe: Vec<String>,
    publish: Vec<String>,
    admin: bool,
    ttl: Option<String>,
    sub: Option<String>,
}

fn parse_token_flags(args: &[String]) -> Result<TokenRequest, String> {
    let mut request = TokenRequest::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        if flag == "--admin" {
            if inline.is_some() {
                return Err("--admin takes no value".into());
            }
            request.admin = true;
            continue;
        }
        if !matches!(flag, "--subscribe" | "--publish" | "--ttl" | "--sub") {
            return Err(format!("unknown option {arg:?} (see `switchyard help`)"));
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag {
            "--subscribe" => request.subscribe.extend(split_patterns(&value)),
            "--publish" => request.publish.extend(split_patterns(&value)),
            "--ttl" => request.ttl = Some(value),
            _ => request.sub = Some(value),
        }
    }
    Ok(request)
}

fn split_patterns(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
}

/// Validates each pattern; the error names the first bad one.
fn check_patterns(flag: &str, patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_TOKEN_PATTERNS {
        return Err(format!(
            "{flag}: more than {MAX_TOKEN_PATTERNS} patterns (the gateway refuses such a token)"
        ));
    }
    for pattern in patterns {
        if let Err(error) = Pattern::parse(pattern) {
            return Err(format!(
                "{flag} {pattern:?} is not a valid pattern: {error}"
            ));
        }
    }
    Ok(())
}

/// AUTH_SECRET as the gateway reads it (trimmed, at least 32 bytes).
fn auth_secret() -> Result<String, String> {
    let raw = match std::env::var("AUTH_SECRET") {
        Ok(raw) => raw,
        Err(std::env::VarError::NotPresent) => {
            return Err(format!(
                "AUTH_SECRET is not set: the token is signed with the gateway's AUTH_SECRET \
                 (at least {MIN_AUTH_SECRET_BYTES} bytes), so set the same value here"
            ))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("AUTH_SECRET is not valid UTF-8".into())
        }
    };
    let secret = raw.trim();
    if secret.len() < MIN_AUTH_SECRET_BYTES {
        return Err(format!(
            "AUTH_SECRET is shorter than {MIN_AUTH_SECRET_BYTES} bytes (the gateway refuses it too)"
        ));
    }
    Ok(secret.to_owned())
}

/// `switchyard token …`: prints one token on stdout (and when it expires on
/// stderr, so `$(switchyard token …)` holds only the token).
fn token(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let request = match parse_token_flags(args) {
        Ok(request) => request,
        Err(message) => return refuse("token", &message),
    };
    let checked = check_patterns("--subscribe", &request.subscribe)
        .and_then(|()| check_patterns("--publish", &request.publish));
    if let Err(message) = checked {
        return refuse("token", &message);
    }
    if request.subscribe.is_empty() && request.publish.is_empty() && !request.admin {
        return refuse(
            "token",
            "the token would allow nothing: give --subscribe, --publish or --admin",
        );
    }
    let Some(ttl_text) = &request.ttl else {
        return refuse("token", "--ttl is required (e.g. --ttl 1h)");
    };
    let ttl = match humantime::parse_duration(ttl_text) {
        Ok(ttl) if ttl >= Duration::from_secs(1) => ttl,
        Ok(_) => return refuse("token", "--ttl must be at least 1s"),
        Err(error) => {
            return refuse(
                "token",
                &format!("--ttl {ttl_text:?} is not a duration such as 15m or 1h: {error}"),
            )
        }
    };
    let secret = match auth_secret() {
        Ok(secret) => secret,
        Err(message) => return refuse("token", &message),
    };
    let Some(exp) = token::now_secs().checked_add(ttl.as_secs()) else {
        return refuse("token", "--ttl is too long");
    };
    let claims = Claims {
        exp,
        sub: request.sub,
        subscribe: request.subscribe,
        publish: request.publish,
        admin: request.admin,
    };
    match token::mint(&secret, &claims) {
        Ok(token) => {
            println!("{token}");
            let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
            eprintln!(
                "switchyard token: valid until {}",
                humantime::format_rfc3339_seconds(expires)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchyard token: could not sign: {error}");
            ExitCode::from(1)
        }
    }
}

/// `switchyard hash-password`: one line from stdin → a `$2y$` bcrypt hash
/// on stdout. On a terminal it asks twice, without echo.
fn hash_password() -> ExitCode {
    let stdin = io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden("Password: ");
        let again = prompt_hidden("Again: ");
        match (first, again) {
            (Ok(first), Ok(again)) if first == again => first,
            (Ok(_), Ok(_)) => return refuse("hash-password", "the two passwords differ"),
            (Err(error), _) | (_, Err(error)) => {
                eprintln!("switchyard hash-password: cannot read the password: {error}");
                return ExitCode::from(1);
            }
        }
    } else {
        match read_line(&mut stdin.lock()) {
            Ok(password) => password,
            Err(error) => {
                eprintln!("switchyard hash-password: cannot read stdin: {error}");
                return ExitCode::from(1);
            }
        }
    };
    if password.is_empty() {
        return refuse(
            "hash-password",
            "no password on stdin (e.g. `printf '%s\\n' \"$PASSWORD\" | switchyard hash-password`)",
        );
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return refuse(
            "hash-password",
            &format!(
                "the password is longer than {MAX_PASSWORD_BYTES} bytes; bcrypt would ignore the rest"
            ),
        );
    }
    match bcrypt::non_truncating_hash_with_result(&password, HASH_COST) {
        Ok(parts) => {
            println!("{}", parts.format_for_version(bcrypt::Version::TwoY));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchyard hash-password: cannot hash: {error}");
            ExitCode::from(1)
        }
    }
}

/// One line (without its `\n` or `\r\n`), at most a little more than any
/// password we accept; longer input is reported as too long, not cut.
fn read_line(input: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    input
        .take(MAX_PASSWORD_BYTES as u64 + 3)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

/// Asks on stderr and reads a line from the terminal with echo off
/// (restored afterwards, also when the read fails).
fn prompt_hidden(prompt: &str) -> io::Result<Vec<u8>> {
    use rustix::termios::{self, LocalModes, OptionalActions};
    let stdin = io::stdin();
    eprint!("{prompt}");
    io::stderr().flush()?;
    let saved = termios::tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    termios::tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    let line = read_line(&mut stdin.lock());
    let restored = termios::tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    restored?;
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn token_flags() {
        let parsed = parse_token_flags(&args(&[
            "--subscribe",
            "positions/#,trades",
            "--subscribe=orders/+",
            "--publish",
            "orders/+",
            "--admin",
            "--ttl=1h",
            "--sub",
            "alice",
        ]))
        .unwrap();
        assert_eq!(parsed.subscribe, ["positions/#", "trades", "orders/+"]);
        assert_eq!(parsed.publish, ["orders/+"]);
        assert!(parsed.admin);
        assert_eq!(parsed.ttl.as_deref(), Some("1h"));
        assert_eq!(parsed.sub.as_deref(), Some("alice"));
        assert!(parse_token_flags(&args(&["--ttl"])).is_err());
        assert!(parse_token_flags(&args(&["--what"])).is_err());
        assert!(parse_token_flags(&args(&["--admin=yes"])).is_err());
        let bad = check_patterns("--subscribe", &args(&["ok/#", "a/#/b"])).unwrap_err();
        assert!(bad.contains("a/#/b"), "{bad}");
    }

    #[test]
    fn a_line_is_read_without_its_newline() {
        assert_eq!(read_line(&mut &b"secret\r\nmore"[..]).unwrap(), b"secret");
        assert_eq!(read_line(&mut &b"secret"[..]).unwrap(), b"secret");
        let long = [b'x'; 200];
        assert!(read_line(&mut &long[..]).unwrap().len() > MAX_PASSWORD_BYTES);
    }
}
