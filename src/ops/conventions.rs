//! PyTorch conventions an ONNX graph does not carry, node by node, and how a user sets them:
//! which of hardtanh and clamp a Clip computes (their gradients differ at the bounds,
//! [`super::clip`]), and an embedding's padding row, to which PyTorch gives no gradient
//! ([`super::gather`]). Each op file reads its node's answer: probe's own metadata key first,
//! then the exporter's `pkg.torch.onnx.fx_node` record, then its default. [`apply`] writes
//! probe's keys from the command line into the graph both engines read (the gradient graph's
//! rules and the libtorch forwards); [`attributes`] says what every node used, for the results
//! file.
use super::attrs::{Attrs, Source};
use super::clip::{clip_as, ClipAs, CLIP_AS_KEY};
use super::gather::{padding_idx, PADDING_IDX_KEY};
use anyhow::{bail, Result};
use onnx_protobuf::{GraphProto, NodeProto, StringStringEntryProto};
use std::collections::BTreeMap;

/// What the command line sets (`--clip-grad`, `--padding-idx`); empty: the graph's own records.
#[derive(Debug, Clone, Default)]
pub struct Conventions {
    /// Every Clip computed as this function.
    pub clip: Option<ClipAs>,
    /// Padding rows by table (an initializer read by Gather nodes), in order; `None` as the
    /// table: every table. `None` as the row: the mathematical gradient of every row.
    pub padding: Vec<(Option<String>, Option<i64>)>,
}

/// `--padding-idx` values: `none` (every table), `NAME=IDX`, `NAME=none`.
pub fn parse_padding(s: &str) -> Result<(Option<String>, Option<i64>), String> {
    if s == "none" {
        return Ok((None, None));
    }
    let (name, idx) = s
        .rsplit_once('=')
        .ok_or("expected NAME=IDX, NAME=none, or none")?;
    if name.is_empty() {
        return Err("expected NAME=IDX: the table's initializer name is empty".into());
    }
    let idx = match idx {
        "none" => None,
        v => Some(
            v.parse::<i64>()
                .map_err(|_| format!("'{v}' is not a row index (an integer, or none)"))?,
        ),
    };
    Ok((Some(name.to_string()), idx))
}

fn set_meta(n: &mut NodeProto, key: &str, value: &str) {
    n.metadata_props.retain(|m| m.key != key);
    let mut m = StringStringEntryProto::new();
    (m.key, m.value) = (key.into(), value.into());
    n.metadata_props.push(m);
}

/// The tables a Gather node reads at axis 0 from an initializer: (node index, table, rows).
fn tables(g: &GraphProto) -> Vec<(usize, String, Option<i64>)> {
    (g.node.iter().enumerate())
        .filter(|(_, n)| n.op_type == "Gather" && n.domain.is_empty() && n.attr_i("axis", 0) == 0)
        .filter_map(|(k, n)| {
            let t = g
                .initializer
                .iter()
                .find(|t| Some(&t.name) == n.input.first())?;
            Some((k, t.name.clone(), t.dims.first().copied()))
        })
        .collect()
}

/// Writes the command line's conventions into `g`'s nodes; a table that no Gather reads, or a
/// row outside it, is refused with the tables there are.
pub fn apply(g: &mut GraphProto, c: &Conventions) -> Result<()> {
    if let Some(clip) = c.clip {
        for n in g.node.iter_mut().filter(|n| n.op_type == "Clip") {
            set_meta(n, CLIP_AS_KEY, clip.name());
        }
    }
    let all = tables(g);
    for (name, idx) in &c.padding {
        let value = idx.map(|i| i.to_string()).unwrap_or("none".into());
        let mut hit = false;
        for (k, t, rows) in all
            .iter()
            .filter(|(_, t, _)| name.as_ref().is_none_or(|n| n == t))
        {
            if let (Some(i), Some(v)) = (idx, rows) {
                if *i < -v || *i >= *v {
                    bail!("--padding-idx {t}={i}: the table has {v} rows");
                }
            }
            set_meta(&mut g.node[*k], PADDING_IDX_KEY, &value);
            hit = true;
        }
        if let (false, Some(name)) = (hit, name) {
            let mut known: Vec<&str> = all.iter().map(|(_, t, _)| t.as_str()).collect();
            known.dedup();
            bail!(
                "--padding-idx {name}: no Gather node reads an initializer of that name; \
                 embedding tables in this model: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// What the nodes of `g` use, for the results file: `clip` (counts by function and source,
/// e.g. `hardtanh 35 (exporter)`; empty without Clip nodes) and `padding_idx` (each table with
/// a padding row or a given `none`, e.g. `model.embed_tokens.weight=1 (exporter)`; empty when
/// every Gather takes its mathematical gradient by default).
pub fn attributes(g: &GraphProto) -> Result<BTreeMap<String, String>> {
    let mut clips: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for n in g.node.iter().filter(|n| n.op_type == "Clip") {
        let (c, s) = clip_as(n);
        *clips.entry((c.name(), s.name())).or_default() += 1;
    }
    let clip: Vec<String> = (clips.iter())
        .map(|((c, s), k)| format!("{c} {k} ({s})"))
        .collect();
    let mut pads: Vec<String> = Vec::new();
    for n in g.node.iter().filter(|n| n.op_type == "Gather") {
        let (p, s) = padding_idx(n)?;
        if p.is_none() && s != Source::Given {
            continue;
        }
        let row = p.map(|p| p.to_string()).unwrap_or("none".into());
        let e = format!(
            "{}={row} ({})",
            n.input.first().cloned().unwrap_or_default(),
            s.name()
        );
        if !pads.contains(&e) {
            pads.push(e);
        }
    }
    Ok(BTreeMap::from([
        ("clip".to_string(), clip.join(", ")),
        ("padding_idx".to_string(), pads.join(", ")),
    ]))
}
