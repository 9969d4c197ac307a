//! The measurement lab's line format: every figure a kernel reports to `cargo xtask
//! bench` (`tests/src/bench.rs` parses it) is one console line
//! `bench: name=<id> unit=<u> batch=<b> n=<samples> min= p10= median= p90= max=
//! outliers=<k> overhead=<o>`, written here only.

/// One figure, ready to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figure<'a> {
    /// The figure's id.
    pub name: &'a str,
    /// `cycles`, `KB/s`, `IOPS`.
    pub unit: &'a str,
    /// Operations per sample.
    pub batch: u64,
    /// Samples.
    pub n: u64,
    /// Order statistics of the samples.
    pub min: u64,
    /// 10th percentile.
    pub p10: u64,
    /// Median.
    pub median: u64,
    /// 90th percentile.
    pub p90: u64,
    /// Largest sample.
    pub max: u64,
    /// Samples far above the median (counted, not dropped).
    pub outliers: u64,
    /// Measuring overhead subtracted from each sample.
    pub overhead: u64,
}

impl<'a> Figure<'a> {
    /// The result of a single timed run: every statistic is `value`.
    pub fn single(name: &'a str, unit: &'a str, value: u64) -> Figure<'a> {
        Figure {
            name,
            unit,
            batch: 1,
            n: 1,
            min: value,
            p10: value,
            median: value,
            p90: value,
            max: value,
            outliers: 0,
            overhead: 0,
        }
    }

    /// Prints the line.
    pub fn print(&self) {
        let f = self;
        crate::println!(
            "bench: name={} unit={} batch={} n={} min={} p10={} median={} p90={} max={} outliers={} overhead={}",
            f.name, f.unit, f.batch, f.n, f.min, f.p10, f.median, f.p90, f.max, f.outliers, f.overhead
        );
    }
}
