//! The schema of an ensemble group: creating it, checking an existing one against the run's
//! definitions, and validating names.

use std::path::Path;

use hdf5::Group;

use super::*;

/// Creates the observables, steps and configurations of one ensemble under `base`
/// (`prefix` is its HDF5 path, "" for the root).
pub(super) fn create_layout(
    path: &Path,
    base: &Group,
    prefix: &str,
    layout: &str,
    observables: &[ObservableDef],
    steps: &[StepDef],
    configs: Option<&ConfigDef>,
) -> Result<(), EnsembleError> {
    // Observables.
    let opath = format!("{prefix}/observables");
    let og = base.create_group("observables").map_err(h5(path, format!("group {opath}")))?;
    let names: Vec<&str> = observables.iter().map(|o| o.name.as_str()).collect();
    write_str_attr(path, &og, &opath, "names", &json_list(&names))?;
    create_rows::<u64>(path, &og, &opath, "sweep", None, ROW_CHUNK)?;
    for o in observables {
        let width = (o.len > 1).then_some(o.len);
        let ds = create_rows::<f64>(path, &og, &opath, &o.name, width, ROW_CHUNK)?;
        let object = format!("{opath}/{}", o.name);
        write_str_attr(path, &ds, &object, "description", &o.description)?;
    }

    create_steps(path, base, prefix, steps)?;

    // Configurations.
    if let Some(c) = configs {
        let ds = create_rows::<f64>(path, base, prefix, "configs", Some(c.config_len), CONFIG_ROW_CHUNK)?;
        let shape: Vec<u64> = c.shape.iter().map(|&x| x as u64).collect();
        ds.new_attr::<u64>()
            .shape([shape.len()])
            .create("shape")
            .and_then(|a| a.write_raw(&shape[..]))
            .map_err(h5(path, format!("attribute {prefix}/configs/shape")))?;
        write_str_attr(path, &ds, &format!("{prefix}/configs"), "layout", layout)?;
        create_rows::<u64>(path, base, prefix, "configs_sweep", None, ROW_CHUNK)?;
    }
    Ok(())
}

/// Creates `{prefix}/steps/<label>` for every step.
pub(super) fn create_steps(path: &Path, base: &Group, prefix: &str, steps: &[StepDef]) -> Result<(), EnsembleError> {
    let spath = format!("{prefix}/steps");
    let sg = base.create_group("steps").map_err(h5(path, format!("group {spath}")))?;
    for s in steps {
        let gpath = format!("{spath}/{}", s.label);
        let g = sg.create_group(&s.label).map_err(h5(path, format!("group {gpath}")))?;
        write_str_attr(path, &g, &gpath, "kind", &s.kind)?;
        let index = u32::try_from(s.index).map_err(|_| invalid(path, &gpath, "step index does not fit in u32"))?;
        write_scalar_attr(path, &g, &gpath, "index", &index)?;
        write_str_attr(path, &g, &gpath, "params", &s.params)?;
        let cols: Vec<&str> = s.columns.iter().map(String::as_str).collect();
        write_str_attr(path, &g, &gpath, "columns", &json_list(&cols))?;
        create_rows::<u8>(path, &g, &gpath, "accepted", None, ROW_CHUNK)?;
        for c in &s.columns {
            create_rows::<f64>(path, &g, &gpath, c, None, ROW_CHUNK)?;
        }
    }
    Ok(())
}

/// Checks that the ensemble under `base` has exactly these definitions (for resume).
pub(super) fn check_layout(
    path: &Path,
    base: &Group,
    prefix: &str,
    observables: &[ObservableDef],
    steps: &[StepDef],
    configs: Option<&ConfigDef>,
) -> Result<(), EnsembleError> {
    // Observables.
    let opath = format!("{prefix}/observables");
    let og = open_group(path, base, "observables")?;
    let names = read_json_list(path, &og, &opath, "names")?;
    let want: Vec<&str> = observables.iter().map(|o| o.name.as_str()).collect();
    if names != want {
        return Err(mismatch(
            path,
            format!("attribute {opath}/names"),
            format!("file has observables {names:?}, this run defines {want:?}"),
        ));
    }
    for o in observables {
        let object = format!("{opath}/{}", o.name);
        let ds = open_dataset(path, &og, &opath, &o.name)?;
        let width = row_width(path, &ds, &object)?;
        if width != o.len {
            return Err(mismatch(
                path,
                format!("dataset {object}"),
                format!("file has length {width}, this run defines length {}", o.len),
            ));
        }
        let descr = read_str_attr(path, &ds, &object, "description")?;
        if descr != o.description {
            return Err(mismatch(
                path,
                format!("attribute {object}/description"),
                format!("file has {descr:?}, this run defines {:?}", o.description),
            ));
        }
    }

    check_steps(path, base, prefix, steps)?;

    // Configurations.
    let cpath = format!("{prefix}/configs");
    match (configs, base.link_exists("configs")) {
        (Some(c), true) => {
            let ds = open_dataset(path, base, prefix, "configs")?;
            let width = row_width(path, &ds, &cpath)?;
            let shape = read_u64_list(path, &ds, &cpath, "shape")?;
            let want: Vec<u64> = c.shape.iter().map(|&x| x as u64).collect();
            // latflow 0.1 stored the lattice extents only, a leading part of today's shape
            let legacy = !shape.is_empty() && shape.len() < want.len() && want.starts_with(&shape);
            if width != c.config_len || !(shape == want || legacy) {
                return Err(mismatch(
                    path,
                    format!("dataset {cpath}"),
                    format!(
                        "file has config_len {width}, shape {shape:?}; this run defines \
                         config_len {}, shape {want:?}",
                        c.config_len
                    ),
                ));
            }
        }
        (None, false) => {}
        (Some(_), false) => {
            return Err(mismatch(path, format!("dataset {cpath}"), "this run stores configurations but the file has none"))
        }
        (None, true) => {
            return Err(mismatch(path, format!("dataset {cpath}"), "the file stores configurations but this run does not"))
        }
    }
    Ok(())
}

/// Checks `{prefix}/steps` against the step definitions (for resume).
pub(super) fn check_steps(path: &Path, base: &Group, prefix: &str, steps: &[StepDef]) -> Result<(), EnsembleError> {
    let spath = format!("{prefix}/steps");
    let sg = open_group(path, base, "steps")?;
    let mut in_file = sg.member_names().map_err(h5(path, format!("group {spath}")))?;
    in_file.sort();
    let mut labels: Vec<&str> = steps.iter().map(|s| s.label.as_str()).collect();
    labels.sort_unstable();
    if in_file != labels {
        return Err(mismatch(
            path,
            format!("group {spath}"),
            format!("file has steps {in_file:?}, this run defines {labels:?}"),
        ));
    }
    for s in steps {
        let gpath = format!("{spath}/{}", s.label);
        let g = open_group(path, &sg, &s.label)?;
        let info = read_step_info(path, &g, &gpath)?;
        let file_def = StepDef { label: s.label.clone(), kind: info.0, index: info.1, params: info.2, columns: info.3 };
        if &file_def != s {
            return Err(mismatch(
                path,
                format!("group {gpath}"),
                format!("file has step {file_def:?}, this run defines {s:?}"),
            ));
        }
    }
    Ok(())
}


pub(super) fn validate_name(
    path: &Path,
    what: &str,
    name: &str,
    extra_reserved: &[&str],
) -> Result<(), EnsembleError> {
    let reason = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.contains('/') {
        Some("must not contain '/'".to_string())
    } else if name.contains('\0') {
        Some("must not contain NUL".to_string())
    } else if name == "." || name == ".." || name == "sweep" || extra_reserved.contains(&name) {
        Some("is reserved".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(EnsembleError::InvalidName {
            path: path.to_owned(),
            what: what.into(),
            name: name.into(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(super) fn check_unique<'a>(
    path: &Path,
    what: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), EnsembleError> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(EnsembleError::InvalidName {
                path: path.to_owned(),
                what: what.into(),
                name: n.into(),
                reason: "is defined twice".into(),
            });
        }
    }
    Ok(())
}

pub(super) fn validate_defs(
    path: &Path,
    observables: &[ObservableDef],
    steps: &[StepDef],
    configs: Option<&ConfigDef>,
) -> Result<(), EnsembleError> {
    for o in observables {
        validate_name(path, "observable", &o.name, &[])?;
        if o.len == 0 {
            return Err(invalid(
                path,
                format!("observable {:?}", o.name),
                "length must be at least 1",
            ));
        }
    }
    check_unique(
        path,
        "observable",
        observables.iter().map(|o| o.name.as_str()),
    )?;
    for s in steps {
        validate_name(path, "step label", &s.label, &[])?;
        for c in &s.columns {
            validate_name(
                path,
                &format!("column of step {:?}", s.label),
                c,
                &["accepted"],
            )?;
        }
        check_unique(
            path,
            &format!("column of step {:?}", s.label),
            s.columns.iter().map(String::as_str),
        )?;
        if u32::try_from(s.index).is_err() {
            return Err(invalid(
                path,
                format!("step {:?}", s.label),
                "index does not fit in u32",
            ));
        }
    }
    check_unique(path, "step label", steps.iter().map(|s| s.label.as_str()))?;
    if let Some(c) = configs {
        if c.config_len == 0 {
            return Err(invalid(path, "configs", "config_len must be at least 1"));
        }
        if c.shape.is_empty() {
            return Err(invalid(path, "configs", "lattice shape must not be empty"));
        }
    }
    Ok(())
}
