//! `latflow inspect`: provenance and contents of an ensemble file.

use crate::ensemble::{replica_group, Ensemble, EnsembleFile, Ladder};

/// A readable description of the file's provenance and datasets: a plain file's one group, or
/// a replica-exchange ensemble's couplings and swap records.
pub fn describe(file: &EnsembleFile) -> String {
    match (file.ladder(), file.couplings.as_slice()) {
        (Some(ladder), _) => describe_ladder(file, ladder),
        (None, [ens]) => describe_plain(ens),
        (None, _) => format!("file            {}\n(no ensemble)\n", file.path.display()),
    }
}

fn describe_plain(ens: &Ensemble) -> String {
    let mut s = header(ens);
    s.push_str(&format!("parameters      {}\n", ens.provenance.theory_params));
    s.push_str(&format!("layout          {}\n", ens.provenance.layout));
    s.push_str(&model(&ens.provenance.model, ""));
    s.push_str(&contents(ens, ""));
    card(&mut s, &ens.provenance.run_card);
    s
}

/// A replica-exchange ensemble: the provenance, then each coupling's group and the swap records.
fn describe_ladder(ens: &EnsembleFile, ladder: &Ladder) -> String {
    let p = &ens.provenance;
    let mut s = String::new();
    s.push_str(&format!("file            {}\n", ens.path.display()));
    s.push_str(&format!("schema version  {} (replica exchange)\n", ens.schema_version));
    s.push_str(&format!("latflow         {}\n", p.latflow_version));
    s.push_str(&format!("created         {}\n", p.created));
    s.push_str(&format!("plugin          {} {} ({})\n", p.plugin_name, p.plugin_version, p.plugin_path));
    s.push_str(&format!("seed            {}\n", p.seed));
    s.push_str(&format!("card            {} (hash {})\n", p.card_path, p.card_hash));
    s.push_str(&format!("layout          {}\n", p.layout));
    s.push_str(&format!("ladder          {} = {:?} ({} couplings)\n", ladder.parameter, ladder.values, ladder.values.len()));
    for (k, (r, v)) in ens.couplings.iter().zip(&ladder.values).enumerate() {
        let g = replica_group(k);
        s.push_str(&format!("{g}: {} = {v}, {} measurements\n", ladder.parameter, r.sweeps.len()));
        s.push_str(&format!("  parameters    {}\n", r.provenance.theory_params));
        s.push_str(&model(&r.provenance.model, "  "));
        s.push_str(&contents(r, &g));
    }
    s.push_str(&format!(
        "/replica_exchange: replica paths [{}, {}] (replica_coupling, sweep)\n",
        ladder.path_sweeps.len(),
        ladder.values.len()
    ));
    for st in &ladder.swaps {
        let cols: Vec<&str> = st.columns.iter().map(|(c, _)| c.as_str()).collect();
        s.push_str(&format!(
            "  /replica_exchange/steps/{:<12} {} swap records, columns: accepted {}\n",
            st.label,
            st.accepted.len(),
            cols.join(" ")
        ));
    }
    card(&mut s, &p.run_card);
    s
}

/// The model provenance (the JSON that `run` records): plugin, version and library, the
/// weights file with the SHA-256 of its bytes as they were loaded, and `init_from`; nothing for
/// a run without a model. A record that is not JSON is shown as it is.
fn model(record: &str, indent: &str) -> String {
    if record.is_empty() {
        return String::new();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(record) else {
        return format!("{indent}model           {record}\n");
    };
    let text = |k: &str| v[k].as_str().map(str::to_string);
    let mut s = format!(
        "{indent}model           {} {} ({})\n",
        text("plugin").unwrap_or_else(|| "?".into()),
        text("version").unwrap_or_default(),
        text("path").unwrap_or_else(|| "library not recorded".into())
    );
    let weights = text("weights").unwrap_or_else(|| "none (untrained, or init_from used as it is)".into());
    s.push_str(&format!("{indent}  weights       {weights}\n"));
    s.push_str(&format!("{indent}  sha256        {}\n", text("weights_sha256").unwrap_or_else(|| "not recorded".into())));
    if let Some(src) = text("init_from") {
        s.push_str(&format!("{indent}  init_from     {src}\n"));
    }
    s
}

fn card(s: &mut String, text: &str) {
    s.push_str("run card:\n");
    for line in text.lines() {
        s.push_str(&format!("  | {line}\n"));
    }
}

fn header(ens: &Ensemble) -> String {
    let p = &ens.provenance;
    let mut s = String::new();
    s.push_str(&format!("file            {}\n", ens.path.display()));
    s.push_str(&format!("schema version  {}\n", ens.schema_version));
    s.push_str(&format!("latflow         {}\n", p.latflow_version));
    s.push_str(&format!("created         {}\n", p.created));
    s.push_str(&format!("plugin          {} {} ({})\n", p.plugin_name, p.plugin_version, p.plugin_path));
    s.push_str(&format!("seed            {}\n", p.seed));
    s.push_str(&format!("card            {} (hash {})\n", p.card_path, p.card_hash));
    s
}

/// A byte count in B, KiB, MiB or GiB, with the exact count.
fn human_bytes(n: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match units.iter().find(|(_, size)| n >= *size) {
        Some((unit, size)) => format!("{:.2} {unit} ({n} bytes)", n as f64 / *size as f64),
        None => format!("{n} bytes"),
    }
}

/// The datasets of one ensemble group (`prefix` "" for the root).
fn contents(ens: &Ensemble, prefix: &str) -> String {
    let mut s = String::new();
    if prefix.is_empty() {
        s.push_str(&format!("measurements    {}\n", ens.sweeps.len()));
    }
    for o in &ens.observables {
        let shape = if o.len == 1 { format!("[{}]", o.n()) } else { format!("[{}, {}]", o.n(), o.len) };
        s.push_str(&format!("  {prefix}/observables/{:<20} {:<14} {}\n", o.name, shape, o.description));
    }
    for st in &ens.steps {
        let cols: Vec<&str> = st.columns.iter().map(|(c, _)| c.as_str()).collect();
        s.push_str(&format!(
            "  {prefix}/steps/{:<12} kind {:<8} {} records, columns: accepted {}\n",
            st.label,
            st.kind,
            st.accepted.len(),
            cols.join(" ")
        ));
    }
    match &ens.configs {
        Some(c) => s.push_str(&format!(
            "  {prefix}/configs         [{}, {}], shape {:?}, {} per configuration (f64)\n",
            c.count,
            c.config_len,
            c.shape,
            human_bytes(c.config_len as u64 * 8)
        )),
        None => s.push_str(&format!("  {prefix}/configs         none stored (save_every = 0)\n")),
    }
    s
}
