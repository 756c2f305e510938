//! Einsum (opset 12): `Y = einsum(equation, X1, ..., Xn)`, explicit (`->`) or implicit output,
//! with ellipses. https://onnx.ai/onnx/operators/onnx__Einsum.html
//!
//! Y is linear in each operand: with the output's subscripts o and operand i's s_i,
//! dX_i = einsum("o, s_1, ..., (no s_i), ... -> s_i'", dY, X_1, ..., X_n without X_i), where
//! s_i' keeps the letters of s_i that occur in o or in another operand: a letter only X_i has
//! was summed over X_i alone, so the derivative is constant along it, and the result is
//! broadcast back over it (Unsqueeze + Expand). Refused with the reason: a letter repeated
//! within one operand (a diagonal, "ii->i"), ellipses of different ranks, and a letter whose
//! extent differs between operands (broadcasting a 1).
use super::attrs::Attrs;
use super::rule::{Ctx, Kind, Rule};
use super::torch::{input, one, TorchCtx, Value};
use crate::model::graph::attr_string;
use anyhow::{bail, Result};

pub static RULE: Rule = Rule::new("Einsum", Kind::Structured).vjp(vjp).torch(torch);

fn torch(c: &TorchCtx, v: Vec<Value>) -> Result<Vec<Value>> {
    let eq = c.attr_s("equation").unwrap_or_default();
    let ts = (0..v.len())
        .map(|i| input(&v, i))
        .collect::<Result<Vec<_>>>()?;
    one(tch::Tensor::f_einsum(&eq, &ts, None::<&[i64]>)?)
}

/// The equation with ellipses written out as letters and the output made explicit: each
/// operand's subscripts and the output's, one char per axis.
fn parse(eq: &str, ranks: &[usize]) -> Result<(Vec<Vec<char>>, Vec<char>)> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        bail!(
            "equation '{eq}' has {} operands, the node {}",
            terms.len(),
            ranks.len()
        );
    }
    let used: Vec<char> = eq.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    let spare: Vec<char> = ('A'..='Z')
        .chain('a'..='z')
        .filter(|c| !used.contains(c))
        .collect();
    let mut ell: Option<usize> = None;
    let mut subs = Vec::new();
    for (t, &r) in terms.iter().zip(ranks) {
        let letters = t.replace("...", "").chars().count();
        if t.contains("...") {
            let k = r.checked_sub(letters).ok_or_else(|| {
                anyhow::anyhow!("operand '{t}' names {letters} axes of a rank-{r} input")
            })?;
            if ell.is_some_and(|e| e != k) {
                bail!(
                    "equation '{eq}': ellipses of different ranks (broadcasting) are not supported"
                );
            }
            ell = Some(k);
        } else if letters != r {
            bail!("operand '{t}' names {letters} axes of a rank-{r} input");
        }
        let e: String = spare[..ell.unwrap_or(0)].iter().collect();
        subs.push(t.replace("...", &e).chars().collect::<Vec<char>>());
    }
    let e: String = spare[..ell.unwrap_or(0)].iter().collect();
    let out: Vec<char> = match rhs {
        Some(r) => r.replace("...", &e).chars().collect(),
        None => {
            // Implicit: the ellipsis, then the letters that occur once, alphabetically.
            let all: Vec<char> = terms
                .iter()
                .flat_map(|t| t.chars())
                .filter(|c| c.is_ascii_alphabetic())
                .collect();
            let mut once: Vec<char> = all
                .iter()
                .copied()
                .filter(|c| all.iter().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort();
            e.chars().chain(once).collect()
        }
    };
    Ok((subs, out))
}

fn vjp(c: &mut Ctx) -> Result<()> {
    let Some(g) = c.go(0) else { return Ok(()) };
    let eq = c.attr_s("equation").unwrap_or_default();
    let what = format!("Einsum node '{}' ('{eq}')", c.node.name);
    let n = c.node.input.len();
    let ranks = (0..n)
        .map(|i| c.rank(c.input(i)))
        .collect::<Result<Vec<_>>>()?;
    let (subs, out) = parse(&eq, &ranks).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    // Extents per letter must agree (no broadcasting of 1s); diagonals are refused.
    let mut extent: std::collections::HashMap<char, usize> = Default::default();
    for (i, s) in subs.iter().enumerate() {
        let dims = c.dims(c.input(i))?;
        for (k, &l) in s.iter().enumerate() {
            if s.iter().filter(|&&m| m == l).count() > 1 {
                bail!(
                    "{what}: letter '{l}' repeats within operand {i} (a diagonal): not supported"
                );
            }
            if let Some(d) = dims[k] {
                if *extent.entry(l).or_insert(d) != d {
                    bail!(
                        "{what}: letter '{l}' has extents {} and {d} (broadcasting): not supported",
                        extent[&l]
                    );
                }
            }
        }
    }
    for i in 0..n {
        if !c.needs(i) {
            continue;
        }
        let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        let kept: Vec<char> = subs[i]
            .iter()
            .copied()
            .filter(|l| out.contains(l) || others.iter().any(|&j| subs[j].contains(l)))
            .collect();
        let mut terms: Vec<String> = vec![out.iter().collect()];
        terms.extend(others.iter().map(|&j| subs[j].iter().collect::<String>()));
        let geq = format!("{}->{}", terms.join(","), kept.iter().collect::<String>());
        let mut ins: Vec<String> = vec![g.clone()];
        ins.extend(others.iter().map(|&j| c.input(j).to_string()));
        let refs: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let mut gi = c.op("Einsum", &refs, vec![attr_string("equation", &geq)]);
        if kept.len() < subs[i].len() {
            let missing: Vec<i64> = (subs[i].iter().enumerate())
                .filter(|(_, l)| !kept.contains(l))
                .map(|(k, _)| k as i64)
                .collect();
            let ax = c.ints(&missing);
            let u = c.op("Unsqueeze", &[&gi, &ax], vec![]);
            let xi = c.input(i).to_string();
            let shape = c.shape_of(&xi);
            gi = c.op("Expand", &[&u, &shape], vec![]);
        }
        c.set(i, gi);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::model::graph::attr_string;
    use crate::ops::testing::{check, Case};

    fn einsum(eq: &str, shapes: &[&[usize]]) -> Case {
        let mut c = Case::new("Einsum").attr(attr_string("equation", eq));
        for s in shapes {
            c = c.input(s);
        }
        c
    }

    crate::ops::testing::gradient_and_torch_tests!(
        einsum_products = [
            einsum("ij,jk->ik", &[&[2, 3], &[3, 4]]),
            einsum("bij,bjk->bik", &[&[2, 4, 3], &[2, 3, 4]]),
            einsum("bhqd,bhkd->bhqk", &[&[2, 2, 3, 4], &[2, 2, 5, 4]]),
            einsum("i,j->ij", &[&[3], &[4]]),
            einsum("ij,jk,kl->il", &[&[2, 3], &[3, 4], &[4, 2]]),
        ],
        einsum_sums_implicit_ellipsis = [
            // j summed in the first operand alone: its gradient is broadcast along j.
            einsum("ij,i->i", &[&[3, 4], &[3]]),
            einsum("ij->", &[&[3, 4]]),
            // Implicit output: "ik".
            einsum("ij,jk", &[&[2, 3], &[3, 4]]),
            einsum("...ij,...jk->...ik", &[&[2, 2, 3], &[2, 3, 4]]),
            einsum(" b i j , b j -> b i ", &[&[2, 3, 4], &[2, 4]]),
        ],
    );

    #[test]
    #[should_panic(expected = "a diagonal")]
    fn diagonal_refused() {
        check(einsum("ii->i", &[&[3, 3]]));
    }
}
