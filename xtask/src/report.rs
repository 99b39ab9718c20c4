//! The benchmark's results: the table (printed, and in `summary.md`), every
//! run (`raw.jsonl`), the chart (`chart.png`, drawn by the runner with
//! matplotlib) and a description of the machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use crate::bench::human;
use crate::load::{Cache, Loader, Outcome, Run};

/// Median, min and max of some samples.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub(crate) fn of(samples: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = samples.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn show(self) -> String {
        format!("{:.2} [{:.2}, {:.2}]", self.median, self.min, self.max)
    }
}

/// A loader's runs in one cache state, or why there are none.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub loader: Loader,
    pub runs: Vec<Run>,
    /// Why it did not run (every time, or after its first run failed).
    pub stopped: Option<Outcome>,
}

impl Row {
    pub(crate) fn new(loader: Loader) -> Self {
        Row {
            loader,
            runs: Vec::new(),
            stopped: None,
        }
    }

    /// GB/s, from the seconds: the median rate is the median time's, so
    /// the two columns agree for any number of runs.
    pub(crate) fn rates(&self) -> Option<Stats> {
        let secs = self.seconds()?;
        let bytes = self.runs[0].bytes as f64;
        Some(Stats {
            median: bytes / secs.median / 1e9,
            min: bytes / secs.max / 1e9,
            max: bytes / secs.min / 1e9,
        })
    }

    /// The backends its runs used, in order of first use.
    fn backends(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for r in &self.runs {
            if !seen.contains(&r.backend.as_str()) {
                seen.push(&r.backend);
            }
        }
        seen.join(" / ")
    }

    fn seconds(&self) -> Option<Stats> {
        Stats::of(self.runs.iter().map(|r| r.seconds))
    }

    fn peak<F: Fn(&Run) -> Option<u64>>(&self, f: F) -> Option<u64> {
        let v = Stats::of(self.runs.iter().filter_map(|r| f(r).map(|b| b as f64)))?;
        Some(v.median as u64)
    }
}

/// A hardware limit measured in the same run: GB/s, one per repetition,
/// and their summary.
#[derive(Debug, Clone)]
pub(crate) struct Limit {
    pub name: String,
    pub what: String,
    pub rates: Vec<f64>,
    pub stats: Stats,
}

impl Limit {
    pub(crate) fn new(name: &str, what: String, rates: Vec<f64>) -> Option<Self> {
        Some(Limit {
            name: name.into(),
            what,
            stats: Stats::of(rates.iter().copied())?,
            rates,
        })
    }
}

/// The rows of one cache state and the limit they are held against.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub state: Cache,
    pub rows: Vec<Row>,
    pub limit: Option<Limit>,
}

impl Section {
    fn baseline(&self) -> Option<Stats> {
        self.rows
            .iter()
            .find(|r| r.loader.is_baseline())
            .and_then(Row::rates)
    }

    /// The Markdown table of this section.
    pub(crate) fn table(&self, device: &str, payload: u64, reps: usize) -> String {
        let limit = self.limit.as_ref().map(|l| l.stats);
        let base = self.baseline();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### {} into {device}: {} payload, n = {reps}\n\n\
             GB/s and seconds: median [min, max]; % limit and × safetensors: of the medians.\n",
            match self.state {
                Cache::Cold => "Cold (every file evicted and confirmed cold before each load)",
                Cache::Warm =>
                    "Warm (every file read into the page cache and confirmed resident before each load)",
                Cache::Remote =>
                    "Remote (ranged reads from the server; a remote object has no cold or warm state here, so one state)",
            },
            human(payload),
        );
        s.push_str(
            "| loader | backend | seconds | GB/s | % limit | × safetensors | peak RSS | peak GPU |\n",
        );
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
        for row in &self.rows {
            let name = if row.loader.is_weightlift_auto() {
                format!("**{}**", row.loader.name())
            } else {
                row.loader.name()
            };
            let why = row.stopped.as_ref().and_then(Outcome::why);
            let (Some(rate), Some(secs)) = (row.rates(), row.seconds()) else {
                let why = why.unwrap_or_else(|| "not run".into());
                let _ = writeln!(s, "| {name} | {} | | | | | | |", why.replace('|', "/"));
                continue;
            };
            let mut backend = row.backends();
            if let Some(why) = why {
                backend.push_str(&format!(" ({} of {reps} runs, then {why})", row.runs.len()));
            }
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                backend.replace('|', "/"),
                format_args!("{:.3} [{:.3}, {:.3}]", secs.median, secs.min, secs.max),
                rate.show(),
                limit.map_or("".into(), |l| format!(
                    "{:.0}%",
                    rate.median / l.median * 100.0
                )),
                base.map_or("".into(), |b| format!("{:.2}", rate.median / b.median)),
                match (row.peak(|r| r.peak_rss), row.peak(|r| r.base_rss)) {
                    (Some(peak), Some(base)) =>
                        format!("{} (+{})", human(peak), human(peak.saturating_sub(base))),
                    (Some(peak), None) => human(peak),
                    _ => String::new(),
                },
                row.peak(|r| r.peak_gpu).map_or("".into(), human),
            );
        }
        if let Some(l) = &self.limit {
            let _ = writeln!(
                s,
                "\nLimit: {} {} GB/s: {}.",
                l.name,
                l.stats.show(),
                l.what
            );
        }
        s
    }

    /// This section as a panel of the chart (GB/s per loader, the limit a line).
    fn panel(&self, device: &str) -> serde_json::Value {
        let limit = self
            .limit
            .as_ref()
            .map(|l| json!({"name": l.name, "gbps": l.stats.median}));
        let rows: Vec<_> = self
            .rows
            .iter()
            .filter_map(|r| {
                let s = r.rates()?;
                Some(json!({"name": r.loader.name(), "median": s.median, "min": s.min, "max": s.max}))
            })
            .collect();
        json!({"title": format!("{} into {device}", self.state.name()), "limit": limit, "rows": rows})
    }
}

/// Everything one benchmark run found.
pub(crate) struct Report {
    pub command: String,
    /// The checkpoint, in full.
    pub checkpoint: String,
    /// The checkpoint, briefly (its file or directory name).
    pub name: String,
    pub device: String,
    pub payload: u64,
    pub reps: usize,
    pub sections: Vec<Section>,
    /// Lines printed before the tables (open and plan timings, notes).
    pub preamble: Vec<String>,
    pub verify: Option<String>,
    pub machine: Vec<(String, String)>,
}

impl Report {
    pub(crate) fn tables(&self) -> String {
        self.sections
            .iter()
            .map(|s| s.table(&self.device, self.payload, self.reps))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Print the tables and the verification, then [`Report::write`] into
    /// `dir`, naming each file written.
    pub(crate) fn publish(&self, dir: &Path, python: Option<&Path>) -> Result<()> {
        println!("\n{}", self.tables());
        if let Some(v) = &self.verify {
            println!("verify: {v}");
        }
        for line in self.write(dir, python)? {
            println!("wrote {line}");
        }
        Ok(())
    }

    /// Write `summary.md`, `raw.jsonl` and (when matplotlib is there)
    /// `chart.png` into `dir`; returns what was written and why a chart is
    /// missing, if it is.
    pub(crate) fn write(&self, dir: &Path, python: Option<&Path>) -> Result<Vec<String>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut wrote = Vec::new();

        let mut raw = String::new();
        for section in &self.sections {
            if let Some(l) = &section.limit {
                for (rep, gbps) in l.rates.iter().enumerate() {
                    let line = json!({"state": section.state.name(), "limit": l.name, "rep": rep, "gbps": gbps});
                    raw.push_str(&format!("{line}\n"));
                }
            }
            for row in &section.rows {
                for (rep, run) in row.runs.iter().enumerate() {
                    let mut v = serde_json::to_value(run)?;
                    v["state"] = json!(section.state.name());
                    v["loader"] = json!(row.loader.name());
                    v["rep"] = json!(rep);
                    v["gbps"] = json!(run.gbps());
                    raw.push_str(&format!("{v}\n"));
                }
                if let Some(stopped) = &row.stopped {
                    let (key, why) = match stopped {
                        Outcome::Unavailable(w) => ("unavailable", w),
                        Outcome::Failed(w) => ("failed", w),
                        Outcome::Ran(_) => continue,
                    };
                    let v = json!({"state": section.state.name(), "loader": row.loader.name(), key: why});
                    raw.push_str(&format!("{v}\n"));
                }
            }
        }
        write(dir.join("raw.jsonl"), &raw, &mut wrote)?;

        let mut md = format!(
            "# weightlift bench\n\n`{}`\n\nCheckpoint: {}\n\n",
            self.command, self.checkpoint
        );
        md.push_str("## Results\n\n");
        md.push_str(&self.tables());
        if let Some(v) = &self.verify {
            let _ = writeln!(md, "\nVerify: {v}");
        }
        md.push_str(METHOD);
        md.push_str("\n## Open and plan\n\n```\n");
        for line in &self.preamble {
            md.push_str(line);
            md.push('\n');
        }
        md.push_str("```\n\n## Machine\n\n");
        for (k, v) in &self.machine {
            let _ = writeln!(md, "- {k}: {v}");
        }
        write(dir.join("summary.md"), &md, &mut wrote)?;

        let chart = dir.join("chart.png");
        match python {
            None => wrote.push("no chart: it is drawn with Python's matplotlib".into()),
            Some(py) => {
                let spec = json!({
                    "title": format!("weightlift bench: {} of {}, n = {}", human(self.payload), self.name, self.reps),
                    "panels": self.sections.iter().map(|s| s.panel(&self.device)).collect::<Vec<_>>(),
                });
                let spec_path = dir.join("chart.json");
                std::fs::write(&spec_path, serde_json::to_string_pretty(&spec)?)?;
                let out = Command::new(py)
                    .arg(crate::load::runner())
                    .args(["chart", "--input"])
                    .arg(&spec_path)
                    .arg("--output")
                    .arg(&chart)
                    .output()
                    .context("starting the chart")?;
                let _ = std::fs::remove_file(&spec_path);
                if out.status.success() {
                    wrote.push(chart.display().to_string());
                } else {
                    wrote.push(format!(
                        "no chart: {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    ));
                }
            }
        }
        Ok(wrote)
    }
}

fn write(path: PathBuf, text: &str, wrote: &mut Vec<String>) -> Result<()> {
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    wrote.push(path.display().to_string());
    Ok(())
}

const METHOD: &str = "
## Method

Every load runs in a fresh process, imports untimed. Cold: each file is
evicted (`posix_fadvise(POSIX_FADV_DONTNEED)`) and confirmed to have no
page resident (`mincore`) before the load, after a pause so that storage
that throttles bursts starts each load rested. Warm: each file is read into
the page cache and confirmed resident right before the load. The clock stops
when every tensor exists on the target device and, for host tensors, one
byte of every page of every tensor has been read, so lazily mapped memory is
paid for. Loaders run interleaved, rotating their order each repetition.
Peak RSS is the loading process's high-water mark (`VmHWM`), the Python
interpreter and torch included; in brackets, how far it rose above the
resident set the process had when the clock started. The limits are measured in the same run:
the storage's read ceiling (cold: a sweep of 24 ways to read the same
files, `O_DIRECT` with io_uring and with threads and buffered with
threads, at several depths and read sizes, whose three best each read
every file again in every repetition, the fastest counting; as fio finds a
ceiling), a memory copy over every core (warm, host), and the
pinned host-to-device copy (warm, GPU). A loader that maps the page cache
into host tensors copies nothing, so warm it can pass the memory-copy limit,
which bounds the loaders that copy.
";

/// What the machine is: CPU, memory, kernel, the filesystem the checkpoint
/// is on, and the Python packages measured.
pub(crate) fn machine(model: &Path, python: Option<&Path>) -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or("unknown".into(), |kib| human(kib * 1024));
    let mut out = vec![
        ("CPU".to_string(), format!("{cpu}, {cores} cores available")),
        ("Memory".to_string(), mem),
        (
            "Kernel".to_string(),
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
    ];
    let dir = if model.is_dir() {
        model
    } else {
        model.parent().unwrap_or(Path::new("."))
    };
    if let Ok(o) = Command::new("df")
        .args(["--output=source,fstype,target"])
        .arg(dir)
        .output()
        && o.status.success()
    {
        let text = String::from_utf8_lossy(&o.stdout);
        if let Some(line) = text.lines().nth(1) {
            out.push((
                "Checkpoint's filesystem".into(),
                line.split_whitespace().collect::<Vec<_>>().join(" "),
            ));
        }
    }
    if let Some(py) = python
        && let Ok(o) = Command::new(py)
            .arg(crate::load::runner())
            .arg("versions")
            .output()
        && o.status.success()
    {
        out.push((
            "Python packages".into(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ));
    }
    out
}
