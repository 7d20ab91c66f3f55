//! `latflow inspect`: provenance and contents of an ensemble file.

use crate::ensemble::Ensemble;

/// A readable description of the file's provenance and datasets.
pub fn describe(ens: &Ensemble) -> String {
    let p = &ens.provenance;
    let mut s = String::new();
    s.push_str(&format!("file            {}\n", ens.path.display()));
    s.push_str(&format!("schema version  {}\n", ens.schema_version));
    s.push_str(&format!("latflow         {}\n", p.latflow_version));
    s.push_str(&format!("created         {}\n", p.created));
    s.push_str(&format!("plugin          {} {} ({})\n", p.plugin_name, p.plugin_version, p.plugin_path));
    s.push_str(&format!("seed            {}\n", p.seed));
    s.push_str(&format!("card            {} (hash {})\n", p.card_path, p.card_hash));
    s.push_str(&format!("parameters      {}\n", p.theory_params));
    s.push_str(&format!("layout          {}\n", p.layout));
    s.push_str(&format!("measurements    {}\n", ens.sweeps.len()));
    for o in &ens.observables {
        let shape = if o.len == 1 { format!("[{}]", o.n()) } else { format!("[{}, {}]", o.n(), o.len) };
        s.push_str(&format!("  /observables/{:<20} {:<14} {}\n", o.name, shape, o.description));
    }
    for st in &ens.steps {
        let cols: Vec<&str> = st.columns.iter().map(|(c, _)| c.as_str()).collect();
        s.push_str(&format!(
            "  /steps/{:<12} kind {:<8} {} records, columns: accepted {}\n",
            st.label,
            st.kind,
            st.accepted.len(),
            cols.join(" ")
        ));
    }
    match &ens.configs {
        Some(c) => s.push_str(&format!(
            "  /configs         [{}, {}], lattice {:?}\n",
            c.count, c.config_len, c.shape
        )),
        None => s.push_str("  /configs         none stored (save_every = 0)\n"),
    }
    s.push_str("run card:\n");
    for line in p.run_card.lines() {
        s.push_str(&format!("  | {line}\n"));
    }
    s
}
