//! A [`Page`] as a one-page PDF 1.4 file: vector paths and Helvetica text (a standard font, not
//! embedded), the content stream deflated. Written by hand (PDF 32000-1:2008, sections 7.5
//! file structure, 8.4-8.5 graphics state and paths, 9.4 text): a catalog, one page tree and
//! page, its content stream, the font, an ExtGState per opacity below 1, an info dictionary,
//! then the cross-reference table whose offsets readers check, and the trailer. No dates or ids:
//! the same figure gives the same bytes.
use super::vector::{helvetica_width, winansi, Align, Item, Page, Rgba};
use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::fmt::Write as _;
use std::io::Write as _;

/// The PDF file of `page`, with `title` in its info dictionary.
pub fn write(page: &Page, title: &str) -> Vec<u8> {
    let s = page.units_per_pt;
    let (w, h) = (page.size.0 as f64 / s, page.size.1 as f64 / s);
    let mut alphas: Vec<f64> = Vec::new();
    for it in &page.items {
        let a = color_of(it).alpha;
        if a < 1.0 && !alphas.iter().any(|x| (x - a).abs() < 1e-4) {
            alphas.push(a);
        }
    }
    let content = content(page, &alphas);
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail.
    z.write_all(content.as_bytes())
        .expect("deflate into memory");
    let stream = z.finish().expect("deflate into memory");

    let mut gs = String::new();
    for (i, a) in alphas.iter().enumerate() {
        let _ = write!(gs, "/GS{i} << /Type /ExtGState /CA {a:.3} /ca {a:.3} >> ");
    }
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Contents 4 0 R \
             /Resources << /Font << /F1 5 0 R >> /ExtGState << {gs}>> >> >>",
            num(w),
            num(h)
        )
        .into_bytes(),
        [
            format!(
                "<< /Length {} /Filter /FlateDecode >>\nstream\n",
                stream.len()
            )
            .into_bytes(),
            stream,
            b"\nendstream".to_vec(),
        ]
        .concat(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
        format!(
            "<< /Producer ({}) /Title ({}) >>",
            pdf_string(&format!("probe {}", env!("CARGO_PKG_VERSION"))),
            pdf_string(title)
        )
        .into_bytes(),
    ];
    // The header's second line: bytes above 127, so tools treat the file as binary.
    let mut out: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    let mut x = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for o in offsets {
        // Each entry exactly 20 bytes: 10-digit offset, 5-digit generation, 'n', CR LF or SP LF.
        let _ = writeln!(x, "{o:010} 00000 n ");
    }
    let _ = write!(
        x,
        "trailer\n<< /Size {} /Root 1 0 R /Info 6 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    );
    out.extend_from_slice(x.as_bytes());
    out
}

fn color_of(it: &Item) -> Rgba {
    match it {
        Item::Path { color, .. }
        | Item::Fill { color, .. }
        | Item::Rect { color, .. }
        | Item::Circle { color, .. }
        | Item::Text { color, .. } => *color,
    }
}

/// A number as PDF writes it: at most 3 decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn rgb(c: Rgba) -> String {
    let f = |v: u8| num(v as f64 / 255.0);
    format!("{} {} {}", f(c.rgb.0), f(c.rgb.1), f(c.rgb.2))
}

/// A literal string's body: WinAnsi bytes, `( ) \` escaped, bytes above 126 in octal.
fn pdf_string(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let b = winansi(c).unwrap_or(b'?');
        match b {
            b'(' | b')' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            32..=126 => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out
}

/// The content stream: units to points with y up (`cm`), then every item in order.
fn content(page: &Page, alphas: &[f64]) -> String {
    let s = page.units_per_pt;
    let h = page.size.1 as f64 / s;
    let mut c = String::new();
    // Butt caps (dashes end where they are cut, as in the PNG), round joins.
    let _ = writeln!(
        c,
        "{} 0 0 {} 0 {} cm 0 J 1 j",
        num(1.0 / s),
        num(-1.0 / s),
        num(h)
    );
    let path = |c: &mut String, pts: &[(i32, i32)]| {
        for (i, p) in pts.iter().enumerate() {
            let _ = write!(c, "{} {} {} ", p.0, p.1, if i == 0 { "m" } else { "l" });
        }
    };
    for it in &page.items {
        let col = color_of(it);
        let gs = alphas.iter().position(|a| (a - col.alpha).abs() < 1e-4);
        if let Some(i) = gs {
            let _ = write!(c, "q /GS{i} gs ");
        }
        match it {
            Item::Path { points, width, .. } => {
                let _ = write!(c, "{} RG {} w ", rgb(col), num(*width));
                path(&mut c, points);
                c.push('S');
            }
            Item::Fill { points, .. } => {
                let _ = write!(c, "{} rg ", rgb(col));
                path(&mut c, points);
                c.push_str("h f");
            }
            Item::Rect {
                a, b, fill, width, ..
            } => {
                let (x0, y0) = (a.0.min(b.0), a.1.min(b.1));
                let (rw, rh) = ((a.0 - b.0).abs(), (a.1 - b.1).abs());
                if *fill {
                    let _ = write!(c, "{} rg {x0} {y0} {rw} {rh} re f", rgb(col));
                } else {
                    let _ = write!(
                        c,
                        "{} RG {} w {x0} {y0} {rw} {rh} re S",
                        rgb(col),
                        num(*width)
                    );
                }
            }
            Item::Circle {
                c: (cx, cy),
                r,
                fill,
                width,
                ..
            } => {
                // Four cubic Beziers, control points at k r from the ends (k = 4(sqrt 2 - 1)/3).
                let (x, y, k) = (*cx as f64, *cy as f64, 0.552_284_75 * r);
                let _ = write!(
                    c,
                    "{} {} {} m {} {} {} {} {} {} c {} {} {} {} {} {} c {} {} {} {} {} {} c {} {} {} {} {} {} c ",
                    if *fill { rgb(col) + " rg" } else { rgb(col) + " RG " + &num(*width) + " w" },
                    num(x + r), num(y),
                    num(x + r), num(y + k), num(x + k), num(y + r), num(x), num(y + r),
                    num(x - k), num(y + r), num(x - r), num(y + k), num(x - r), num(y),
                    num(x - r), num(y - k), num(x - k), num(y - r), num(x), num(y - r),
                    num(x + k), num(y - r), num(x + r), num(y - k), num(x + r), num(y),
                );
                c.push_str(if *fill { "f" } else { "s" });
            }
            Item::Text {
                text,
                at,
                align,
                angle,
                em,
                ..
            } => {
                let th = (*angle as f64).to_radians();
                let (dx, dy) = (th.cos().round(), th.sin().round());
                // Glyphs' up in y-down units: the baseline direction turned a quarter back.
                let (ux, uy) = (dy, -dx);
                let back = match align {
                    Align::Start => 0.0,
                    Align::Middle => 0.5,
                    Align::End => 1.0,
                } * em
                    * helvetica_width(text);
                let (x, y) = (at.0 - back * dx, at.1 - back * dy);
                let _ = write!(
                    c,
                    "BT /F1 1 Tf {} rg {} {} {} {} {} {} Tm ({}) Tj ET",
                    rgb(col),
                    num(em * dx),
                    num(em * dy),
                    num(em * ux),
                    num(em * uy),
                    num(x),
                    num(y),
                    pdf_string(text)
                );
            }
        }
        if gs.is_some() {
            c.push_str(" Q");
        }
        c.push('\n');
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xref_offsets_point_at_their_objects() {
        let mut page = Page::new((1000, 500), 10.0);
        page.items.push(Item::Text {
            text: "a (b) \\ é".into(),
            at: (10.0, 20.0),
            align: Align::Middle,
            angle: 270,
            em: 80.0,
            color: Rgba {
                rgb: (0, 0, 0),
                alpha: 0.5,
            },
        });
        let pdf = write(&page, "t");
        // Byte offsets: the file is binary (the header's second line, the deflated stream).
        let at = |needle: &[u8]| {
            pdf.windows(needle.len())
                .rposition(|w| w == needle)
                .unwrap()
        };
        let tail = String::from_utf8(pdf[at(b"startxref\n")..].to_vec()).unwrap();
        let start: usize = tail.lines().nth(1).unwrap().parse().unwrap();
        let xref = String::from_utf8(pdf[start..].to_vec()).unwrap();
        assert!(xref.starts_with("xref\n0 7\n"));
        for (i, line) in xref.lines().skip(3).take(6).enumerate() {
            assert_eq!(line.len(), 19, "{line:?} (20 bytes with its newline)");
            let off: usize = line[..10].parse().unwrap();
            assert!(pdf[off..].starts_with(format!("{} 0 obj", i + 1).as_bytes()));
        }
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains("/MediaBox [0 0 100 50]"));
        assert_eq!(pdf_string("a (b) \\ é"), "a \\(b\\) \\\\ \\351");
    }
}
