//! How the command line prints: a table or text for people, JSON with
//! `--json`, nothing but errors with `--quiet`. Commands hand their result
//! to [`Out`], which decides; no command tests `--json` itself.

use std::fmt::Display;
use std::time::Duration;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

/// What a command's result is printed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Tables and sentences on stdout, notes and progress on stderr.
    Human,
    /// One JSON document on stdout; no notes, no progress bars.
    Json,
    /// Nothing on stdout; errors on stderr and the exit status.
    Quiet,
}

/// The output of one command.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub format: Format,
}

impl Out {
    pub fn new(json: bool, quiet: bool) -> Out {
        let format = match (json, quiet) {
            (true, _) => Format::Json,
            (false, true) => Format::Quiet,
            (false, false) => Format::Human,
        };
        Out { format }
    }

    pub fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// Progress bars and notes stay off unless a person reads the output.
    pub fn quiet(&self) -> bool {
        self.format != Format::Human
    }

    /// `v` as indented JSON with `--json`, else what `human` makes of it.
    pub fn show<T: Serialize + ?Sized, D: Display>(&self, v: &T, human: impl FnOnce(&T) -> D) {
        match self.format {
            Format::Json => println!("{}", pretty(v)),
            Format::Human => println!("{}", human(v)),
            Format::Quiet => {}
        }
    }

    /// `v` as indented JSON with `--json` only: for commands whose human
    /// form was printed line by line as they went.
    pub fn json<T: Serialize + ?Sized>(&self, v: &T) {
        if self.format == Format::Json {
            println!("{}", pretty(v));
        }
    }

    /// One record of a stream (`beamflow watch`): a line of JSON with
    /// `--json`, a line of text otherwise.
    pub fn record<T: Serialize + ?Sized>(&self, v: &T, human: impl Display) {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string(v).expect("serialisable")),
            Format::Human => println!("{human}"),
            Format::Quiet => {}
        }
    }

    /// A benchmark's report: one line of JSON with `--json` (for files and
    /// scripts), indented otherwise.
    pub fn report<T: Serialize + ?Sized>(&self, v: &T) {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string(v).expect("serialisable")),
            Format::Human => println!("{}", pretty(v)),
            Format::Quiet => {}
        }
    }

    /// A line for a person on stdout (not with `--json` or `--quiet`).
    pub fn line(&self, text: impl Display) {
        if self.format == Format::Human {
            println!("{text}");
        }
    }

    /// A remark for a person on stderr: registered flows, where files went.
    pub fn note(&self, text: impl Display) {
        if self.format == Format::Human {
            eprintln!("{text}");
        }
    }
}

fn pretty<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable")
}

/// An optional value in a table or sentence: "—" where there is none.
pub fn dash(v: Option<&str>) -> String {
    v.unwrap_or("—").to_string()
}

/// A table with the CLI's one style, wrapped to the terminal's width
/// (`COLUMNS` where set; no wrapping into a pipe or file).
pub fn table(header: &[&str]) -> Table {
    let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
    sized(header, width)
}

fn sized(header: &[&str], width: Option<u16>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(w) = width {
        t.set_width(w);
    }
    t.set_header(header.to_vec());
    t
}

/// Long text in a list's cell: its first line, at most `max` characters
/// (the whole of it is in `show`).
pub fn short(text: &str, max: usize) -> String {
    let first = text.lines().next().unwrap_or("");
    let cut: String = first.chars().take(max).collect();
    if cut.chars().count() < first.chars().count() || text.lines().nth(1).is_some() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A kernel's report as a two-column table of named figures.
pub fn figures<K: ToString>(rows: impl IntoIterator<Item = (K, String)>) -> Table {
    let mut t = table(&["figure", "value"]);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    t
}

/// A progress bar over frames of `what`, drawn on stderr unless `quiet`.
pub fn bar(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:14} [{bar:30}] {pos}/{len} frames {elapsed} ({per_sec}, eta {eta})",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_keep_to_the_width_and_lists_to_one_line() {
        let mut t = sized(&["kernel", "params"], Some(40));
        t.add_row(vec!["xpcs.multitau".to_string(), ["raw"; 30].join(", ")]);
        let text = t.to_string();
        assert!(text.lines().count() > 4, "wrapped:\n{text}");
        for l in text.lines() {
            assert!(l.chars().count() <= 40, "{l}");
        }
        assert_eq!(
            short("step `a` failed\n  at frame 3\n", 80),
            "step `a` failed…"
        );
        assert_eq!(short("abcdef", 3), "abc…");
        assert_eq!(short("abc", 3), "abc");
    }
}
