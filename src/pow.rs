//! `pow`, defined in the binary so that it does not link libm.so.6.
//!
//! The only libm function the binary uses is `pow`, which tokio's multi-thread scheduler calls to weigh task poll
//! times (mount units run a current-thread runtime and never call it). Loading libm.so.6 all the same cost every
//! process about 320 KB of resident pages: the loader runs libm's IFUNC resolvers and relocations, which are spread
//! over its code, and the kernel maps the 64 KiB around each page touched (issue #6, P5: <= 4 MB per mount unit).
//! With `pow` defined here the linker resolves it statically and `--as-needed` drops libm. `libm::pow` is a port of
//! musl's correctly-rounded-to-within-1-ulp `pow`.

/// The C `pow(x, y)`, for the call in tokio's scheduler.
// SAFETY: `no_mangle` counts as unsafe code: a C symbol may clash with another. This one is not exported (executables do
// not export their symbols), and nothing else in the link defines `pow`.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    // Exact values, not `f64::powf`: in this crate that calls the `pow` above.
    #[test]
    fn computes_c_pow() {
        let cases = [
            (2.0, 10.0, 1024.0),
            (0.5, 3.0, 0.125),
            (4.0, 0.5, 2.0),
            (10.0, -2.0, 0.01),
            (1.5, 1.5, 1.837_117_307_087_383_6),
            (0.9, 0.25, 0.974_003_746_425_296_7),
            (0.0, 0.0, 1.0),
        ];
        for (x, y, expected) in cases {
            let got = super::pow(x, y);
            assert!(
                (got - expected).abs() <= expected * f64::EPSILON,
                "pow({x}, {y}) = {got}, expected {expected}"
            );
        }
    }
}
