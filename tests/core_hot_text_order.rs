//! packaging/hot-text.order against the packaged build. build.rs has the linker place the functions the order lists
//! together, which keeps each mount unit's resident code small (issue #6, P5). The names carry hashes that change
//! with the toolchain and the dependencies, and the linker silently skips names it does not know, so a stale list
//! would quietly cost every mount unit megabytes. This fails instead, and says how to regenerate the list.
//!
//! Reads the linker map that packaging/build-deb.sh writes (target/hot-text.map; scripts/test.sh builds the package
//! first). Fails, never skips, when the map is missing.
// A test crate: failing loudly (unwrap, expect, panic, indexing) is how it reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The function of each `.text.<name>` input section in an LLD map (`.text.unlikely.<name>` and the like included).
fn functions_in(map: &str) -> HashSet<&str> {
    map.lines()
        .filter_map(|line| line.trim_end().split_once(":(.text.")?.1.strip_suffix(')'))
        .map(|section| {
            ["unlikely.", "hot.", "startup.", "exit."]
                .iter()
                .find_map(|prefix| section.strip_prefix(prefix))
                .unwrap_or(section)
        })
        .collect()
}

#[test]
fn the_hot_text_order_names_functions_of_the_packaged_build() {
    let map_path = workspace().join("target/hot-text.map");
    let map = std::fs::read_to_string(&map_path).unwrap_or_else(|error| {
        panic!(
            "{}: {error}\nrun packaging/build-deb.sh (scripts/test.sh does), which writes it",
            map_path.display()
        )
    });
    let built = functions_in(&map);
    assert!(
        built.len() > 1000,
        "{} lists {} functions: not a linker map of the release build",
        map_path.display(),
        built.len()
    );
    let order = std::fs::read_to_string(workspace().join("packaging/hot-text.order")).unwrap();
    let listed: Vec<&str> = order
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(
        listed.len() > 500,
        "packaging/hot-text.order lists {} functions",
        listed.len()
    );
    let missing: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|name| !built.contains(name))
        .collect();
    // A few names carry LLVM's per-build numbering (`.1234`) and drift with any change; most must match.
    assert!(
        missing.len() * 20 <= listed.len(),
        "packaging/hot-text.order is stale: {} of its {} functions are not in the build (toolchain or dependency \
         change?). Run packaging/profile-hot-text.sh, then check P5 with `cargo bench --bench service`. \
         First missing: {:#?}",
        missing.len(),
        listed.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn reads_function_names_from_an_lld_map() {
    let map = "\
             VMA              LMA     Size Align Out     In      Symbol
          17b000           17b000   499638    64 .text
          17b000           17b000       26    16         /x/a.o:(.text._ZN3foo3bar17h0123456789abcdefE)
          17b000           17b000       26     1                 _ZN3foo3bar17h0123456789abcdefE
          17b040           17b040       10    16         /x/b.o:(.text.unlikely._RNvCs1_3std5abort)
          17b050           17b050       10    16         /x/c.o:(.rodata.table)
";
    let functions = functions_in(map);
    assert_eq!(
        functions,
        HashSet::from(["_ZN3foo3bar17h0123456789abcdefE", "_RNvCs1_3std5abort"])
    );
}

/// The fakes (src/testing.rs) are behind the `testing` feature, which only the dev-dependency on this crate turns
/// on: `cargo build --release` (packaging/build-deb.sh) must resolve the crate without it.
#[test]
fn the_packaged_build_leaves_out_the_test_fakes() {
    let features_of = |edges: &str| {
        let output = std::process::Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args([
                "tree",
                "--offline",
                "-p",
                "docker-volume-libsecret",
                "--depth",
                "0",
                "-f",
                "{f}",
                "-e",
                edges,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo tree: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The first line is the crate itself; the rest lists its dependency sections.
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let shipped = features_of("normal,features");
    assert!(
        !shipped.split(',').any(|feature| feature == "testing"),
        "the shipped build enables: {shipped:?}"
    );
    // And the check sees the feature where it is on: tests and benches.
    let tested = features_of("normal,dev,features");
    assert!(
        tested.split(',').any(|feature| feature == "testing"),
        "the test build enables: {tested:?}"
    );
}
