//! Where a profiled step's time goes: the operator table of a Chrome trace written by
//! libtorch's profiler (ours, [`lpl_torch_ext::profiler`], or `torch.profiler`'s
//! `export_chrome_trace`: the same Kineto format), as `torch.profiler`'s
//! `key_averages().table()` prints it: per operator name, calls, self time (its own time,
//! without the operators it called) and total time, sorted by self time; CUDA kernels by
//! their device time.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Result, TrainError, invalid};

/// One operator (or kernel) name's totals over a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct OpStat {
    /// The operator's name (`aten::addmm`) or the kernel's.
    pub name: String,
    /// How many times it ran.
    pub calls: usize,
    /// Its own time in ms: its duration less that of the operators it called.
    pub self_ms: f64,
    /// Its whole duration in ms, callees included.
    pub total_ms: f64,
}

/// The operator and kernel tables of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSummary {
    /// CPU-side operators (`cpu_op` events), by self time, largest first.
    pub cpu_ops: Vec<OpStat>,
    /// Device kernels (`kernel` events), by time, largest first; empty on the CPU.
    pub kernels: Vec<OpStat>,
}

/// A duration event of the trace: `(start, duration)` in microseconds.
struct Span<'a> {
    name: &'a str,
    ts: f64,
    dur: f64,
}

impl ProfileSummary {
    /// Reads the Chrome trace at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Io { path: path.to_path_buf(), source: e })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            invalid("profile", format!("{}: not a Chrome trace: {e}", path.display()))
        })?;
        Self::from_trace(&json).map_err(|e| invalid("profile", format!("{}: {e}", path.display())))
    }

    /// The tables of a parsed trace (`{"traceEvents": [...]}`).
    pub fn from_trace(trace: &serde_json::Value) -> std::result::Result<Self, String> {
        let events = trace["traceEvents"].as_array().ok_or("no `traceEvents` array")?;
        // complete events ("X") by thread; kernels are not nested
        let mut threads: BTreeMap<(String, String), Vec<Span<'_>>> = BTreeMap::new();
        let mut kernels: BTreeMap<&str, OpStat> = BTreeMap::new();
        for e in events {
            if e["ph"] != "X" {
                continue;
            }
            let (Some(name), Some(ts), Some(dur)) =
                (e["name"].as_str(), e["ts"].as_f64(), e["dur"].as_f64())
            else {
                continue;
            };
            match e["cat"].as_str() {
                Some("cpu_op") => threads
                    .entry((e["pid"].to_string(), e["tid"].to_string()))
                    .or_default()
                    .push(Span { name, ts, dur }),
                Some("kernel") => {
                    let k = kernels.entry(name).or_insert_with(|| OpStat::new(name));
                    k.calls += 1;
                    k.self_ms += dur / 1e3;
                    k.total_ms += dur / 1e3;
                }
                _ => {}
            }
        }
        let mut ops: BTreeMap<&str, OpStat> = BTreeMap::new();
        for spans in threads.values_mut() {
            // parents before their children: by start, the longer first at equal starts
            spans.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(b.dur.total_cmp(&a.dur)));
            // the open ancestors: (end, index into `own`)
            let mut stack: Vec<(f64, usize)> = Vec::new();
            let mut own: Vec<f64> = spans.iter().map(|s| s.dur).collect();
            for (i, s) in spans.iter().enumerate() {
                while stack.last().is_some_and(|&(end, _)| end <= s.ts) {
                    stack.pop();
                }
                if let Some(&(_, parent)) = stack.last() {
                    own[parent] -= s.dur;
                }
                stack.push((s.ts + s.dur, i));
            }
            for (s, own) in spans.iter().zip(own) {
                let op = ops.entry(s.name).or_insert_with(|| OpStat::new(s.name));
                op.calls += 1;
                op.self_ms += own.max(0.0) / 1e3;
                op.total_ms += s.dur / 1e3;
            }
        }
        let sorted = |m: BTreeMap<&str, OpStat>| {
            let mut v: Vec<OpStat> = m.into_values().collect();
            v.sort_by(|a, b| b.self_ms.total_cmp(&a.self_ms).then(a.name.cmp(&b.name)));
            v
        };
        Ok(Self { cpu_ops: sorted(ops), kernels: sorted(kernels) })
    }

    /// The sum of the operators' self times in ms: the time the profiled threads spent in
    /// operators.
    pub fn cpu_self_ms(&self) -> f64 {
        self.cpu_ops.iter().map(|o| o.self_ms).sum()
    }

    /// The `top` operators (and kernels, when there are any) as markdown tables, with each
    /// one's share of the total self time.
    pub fn table(&self, top: usize) -> String {
        let mut out = String::new();
        let mut section = |title: &str, ops: &[OpStat]| {
            let all: f64 = ops.iter().map(|o| o.self_ms).sum();
            out.push_str(&format!(
                "{title} ({} names, {all:.1} ms self in all)\n\n| name | calls | self ms | self % | total ms |\n|---|---:|---:|---:|---:|\n",
                ops.len()
            ));
            for o in ops.iter().take(top) {
                out.push_str(&format!(
                    "| `{}` | {} | {:.2} | {:.1} | {:.2} |\n",
                    o.name,
                    o.calls,
                    o.self_ms,
                    100.0 * o.self_ms / all.max(1e-12),
                    o.total_ms
                ));
            }
            out.push('\n');
        };
        section("CPU operators by self time", &self.cpu_ops);
        if !self.kernels.is_empty() {
            section("Device kernels by time", &self.kernels);
        }
        out
    }
}

impl OpStat {
    fn new(name: &str) -> Self {
        Self { name: name.to_string(), calls: 0, self_ms: 0.0, total_ms: 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, tid: u64, ts: f64, dur: f64) -> serde_json::Value {
        serde_json::json!({"ph": "X", "cat": "cpu_op", "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur})
    }

    #[test]
    fn self_time_excludes_callees_per_thread() {
        // thread 1: linear (0..100) calls addmm (10..70), which calls mm (20..50) and then
        // copy_ (50..60); then a second linear (100..130) with no callee. Thread 2: a mm
        // overlapping thread 1's times, which is not anyone's child.
        let trace = serde_json::json!({"traceEvents": [
            op("aten::linear", 1, 0.0, 100.0),
            op("aten::mm", 1, 20.0, 30.0),
            op("aten::addmm", 1, 10.0, 60.0),
            op("aten::copy_", 1, 50.0, 10.0),
            op("aten::linear", 1, 100.0, 30.0),
            op("aten::mm", 2, 15.0, 40.0),
            {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 5.0, "dur": 8.0},
            {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 30.0, "dur": 4.0},
            {"ph": "i", "cat": "cpu_op", "name": "marker", "ts": 1.0},
            {"ph": "X", "cat": "python_function", "name": "step", "pid": 1, "tid": 1, "ts": 0.0, "dur": 500.0},
        ]});
        let s = ProfileSummary::from_trace(&trace).unwrap();
        let get = |n: &str| s.cpu_ops.iter().find(|o| o.name == n).unwrap().clone();
        let linear = get("aten::linear");
        assert_eq!(linear.calls, 2);
        assert!((linear.self_ms - (40.0 + 30.0) / 1e3).abs() < 1e-12, "{linear:?}");
        assert!((linear.total_ms - 0.130).abs() < 1e-12);
        let addmm = get("aten::addmm");
        assert!((addmm.self_ms - 0.020).abs() < 1e-12, "{addmm:?}");
        let mm = get("aten::mm");
        assert_eq!(mm.calls, 2);
        assert!((mm.self_ms - 0.070).abs() < 1e-12, "{mm:?}");
        assert!((get("aten::copy_").self_ms - 0.010).abs() < 1e-12);
        // all self times add up to the threads' busy time (130 + 40 us)
        assert!((s.cpu_self_ms() - 0.170).abs() < 1e-12);
        // sorted by self time: linear (70 us) and mm (70 us) by name, then addmm, copy_
        let names: Vec<&str> = s.cpu_ops.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["aten::linear", "aten::mm", "aten::addmm", "aten::copy_"]);
        assert_eq!(s.kernels.len(), 1);
        assert_eq!(s.kernels[0].calls, 2);
        assert!((s.kernels[0].self_ms - 0.012).abs() < 1e-12);
        let table = s.table(2);
        assert!(table.contains("| `aten::linear` | 2 | 0.07 | 41.2 | 0.13 |"), "{table}");
        assert!(!table.contains("aten::copy_") && table.contains("Device kernels"), "{table}");
    }

    #[test]
    fn a_file_that_is_not_a_trace_is_named() {
        let dir = std::env::temp_dir().join(format!("lpl-profile-summary-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.json");
        std::fs::write(&path, "{\"events\": []}").unwrap();
        let err = ProfileSummary::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("trace.json") && err.contains("traceEvents"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
