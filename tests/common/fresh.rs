//! A test never loads a stale in-tree plugin library.
//!
//! The tested binary searches `target/<profile>/deps/` and then `target/<profile>/` for
//! `liblatflow_*` libraries. Cargo rebuilds a library when one of its source files, or a
//! library it depends on, changed; it decides by modification times. This check applies the
//! same rule to every library the binary can load, before the first run:
//!
//! * the library's own source files are those rustc listed in its dep-info file
//!   (`deps/<crate>.d`, written by the very build that produced the library, so `#[cfg(test)]`
//!   modules are not among them);
//! * for each workspace crate it depends on (transitively, by Cargo.lock: latflow-core, and
//!   latflow-flow-common for the flow models), the source files that the dep-info files of
//!   that crate's library builds list;
//! * the library is stale if any of these files is newer than it, or is missing, or if it
//!   has no dep-info at all (it was not built from this workspace: a leftover of a removed
//!   plugin, or a copy).
//!
//! Registry dependencies never change under a fixed Cargo.lock, so they need no check. A
//! stale library fails the test with "stale plugin …: rebuild with cargo build --workspace"
//! instead of silently testing old code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Panics with a "stale plugin" message if a `liblatflow_*` library in `exe_dir/deps` or
/// `exe_dir` (the directories the tested binary searches) is older than its sources.
pub fn check_plugins_beside(exe_dir: &Path, workspace: &Path) {
    let lock = lock_dependencies(workspace);
    let deps = exe_dir.join("deps");
    for dir in [&deps, &exe_dir.to_path_buf()] {
        for lib in plugin_libraries(dir) {
            let file_name = lib.file_name().unwrap().to_owned();
            if dir == exe_dir && deps.join(&file_name).is_file() {
                continue; // shadowed by the copy in deps/, which is searched first
            }
            if let Err(why) = check_library(&lib, &deps, workspace, &lock) {
                panic!(
                    "stale plugin {}: {why}; rebuild with cargo build --workspace",
                    lib.display()
                );
            }
        }
    }
}

fn plugin_libraries(dir: &Path) -> Vec<PathBuf> {
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut libs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{prefix}latflow_")) && n.ends_with(suffix)
                })
        })
        .collect();
    libs.sort();
    libs
}

fn check_library(
    lib: &Path,
    deps: &Path,
    workspace: &Path,
    lock: &BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let built = modified(lib).ok_or("cannot read its modification time")?;
    let name = lib.file_name().unwrap().to_string_lossy();
    let krate = name
        .trim_start_matches(std::env::consts::DLL_PREFIX)
        .trim_end_matches(std::env::consts::DLL_SUFFIX)
        .to_string();
    let own = library_sources(deps, &krate, workspace, |target| {
        Path::new(target)
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == name)
    });
    if own.is_empty() {
        return Err(
            "no dep-info for it in this target directory: it was not built from this workspace"
                .into(),
        );
    }
    // The library's own dep-info is rewritten by every build of it: a source it lists that is
    // gone means the library predates the removal.
    for src in &own {
        match modified(src) {
            None => return Err(format!("its source {} no longer exists", src.display())),
            Some(t) if t > built => {
                return Err(format!("{} changed after it was built", src.display()))
            }
            Some(_) => {}
        }
    }
    // Dependencies: dep-info files of other builds of them (other features, `cargo check`)
    // may list files since removed; only a file newer than the library makes it stale.
    let package = krate.replace('_', "-");
    for dep in workspace_dependencies(&package, lock) {
        let dep_crate = dep.replace('-', "_");
        let lib_build = |t: &str| t.ends_with(".rlib") || t.ends_with(".rmeta");
        for src in library_sources(deps, &dep_crate, workspace, lib_build) {
            if modified(&src).is_some_and(|t| t > built) {
                return Err(format!(
                    "{} ({dep}) changed after it was built",
                    src.display()
                ));
            }
        }
    }
    Ok(())
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The source files listed by the dep-info files `deps/<krate>.d` and `deps/<krate>-*.d` for a
/// build output accepted by `wanted` (the dep-info format is `output: input input …`, one
/// rule per output, paths relative to the workspace root or absolute).
fn library_sources(
    deps: &Path,
    krate: &str,
    workspace: &Path,
    wanted: impl Fn(&str) -> bool,
) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(deps) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = n.strip_suffix(".d") else {
            continue;
        };
        if stem != krate && !stem.strip_prefix(krate).is_some_and(|r| r.starts_with('-')) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some((target, inputs)) = line.split_once(": ") else {
                continue;
            };
            if !wanted(target.trim()) {
                continue;
            }
            for input in inputs.split_whitespace() {
                let p = Path::new(input);
                out.insert(if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    workspace.join(p)
                });
            }
        }
    }
    out
}

/// package name → names of the packages it depends on, from Cargo.lock.
fn lock_dependencies(workspace: &Path) -> BTreeMap<String, Vec<String>> {
    let path = workspace.join("Cargo.lock");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let lock: toml::Value = text
        .parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
    let mut out = BTreeMap::new();
    for p in lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        let Some(name) = p.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        let deps = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            // "name" or "name version" when several versions are locked
            .map(|d| d.split(' ').next().unwrap_or(d).to_string())
            .collect();
        out.insert(name.to_string(), deps);
    }
    out
}

/// The `latflow-*` packages that `package` depends on, transitively.
fn workspace_dependencies(package: &str, lock: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![package.to_string()];
    while let Some(p) = todo.pop() {
        for d in lock.get(&p).into_iter().flatten() {
            if d.starts_with("latflow-") && seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}
