//! A [`Page`] as an SVG 1.1 document, in points, its printed size given in inches. Text names
//! DejaVu Sans, whose widths the layout measured (the PNG's font), then Verdana and Bitstream
//! Vera Sans (the same widths); a viewer without them substitutes a narrower sans, so labels
//! still fit. Text is anchored where it is aligned (start, middle, end), so any difference in
//! width goes away from the axes.
use super::vector::{Align, Item, Page, Rgba};
use std::fmt::Write as _;

const FONTS: &str = "'DejaVu Sans', Verdana, 'Bitstream Vera Sans', sans-serif";

pub fn write(page: &Page, title: &str) -> String {
    let s = page.units_per_pt;
    let (w, h) = (page.size.0 as f64 / s, page.size.1 as f64 / s);
    let p = |v: f64| num(v / s);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
         version=\"1.1\" width=\"{}in\" height=\"{}in\" viewBox=\"0 0 {} {}\">",
        num(w / 72.0),
        num(h / 72.0),
        num(w),
        num(h)
    );
    let _ = writeln!(o, "<title>{}</title>", escape(title));
    let points = |pts: &[(i32, i32)]| -> String {
        pts.iter()
            .map(|q| format!("{},{}", p(q.0 as f64), p(q.1 as f64)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for it in &page.items {
        match it {
            Item::Path {
                points: pts,
                color,
                width,
            } => {
                let _ = writeln!(
                    o,
                    "<polyline points=\"{}\" fill=\"none\" {} stroke-width=\"{}\" stroke-linejoin=\"round\"/>",
                    points(pts),
                    paint("stroke", *color),
                    p(*width)
                );
            }
            Item::Fill { points: pts, color } => {
                let _ = writeln!(
                    o,
                    "<polygon points=\"{}\" {}/>",
                    points(pts),
                    paint("fill", *color)
                );
            }
            Item::Rect {
                a,
                b,
                color,
                fill,
                width,
            } => {
                let (x0, y0) = (a.0.min(b.0) as f64, a.1.min(b.1) as f64);
                let (rw, rh) = ((a.0 - b.0).abs() as f64, (a.1 - b.1).abs() as f64);
                let look = if *fill {
                    paint("fill", *color)
                } else {
                    format!(
                        "fill=\"none\" {} stroke-width=\"{}\"",
                        paint("stroke", *color),
                        p(*width)
                    )
                };
                let _ = writeln!(
                    o,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" {look}/>",
                    p(x0),
                    p(y0),
                    p(rw),
                    p(rh)
                );
            }
            Item::Circle {
                c,
                r,
                color,
                fill,
                width,
            } => {
                let look = if *fill {
                    paint("fill", *color)
                } else {
                    format!(
                        "fill=\"none\" {} stroke-width=\"{}\"",
                        paint("stroke", *color),
                        p(*width)
                    )
                };
                let _ = writeln!(
                    o,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" {look}/>",
                    p(c.0 as f64),
                    p(c.1 as f64),
                    p(*r)
                );
            }
            Item::Text {
                text,
                at,
                align,
                angle,
                em,
                color,
            } => {
                let anchor = match align {
                    Align::Start => "start",
                    Align::Middle => "middle",
                    Align::End => "end",
                };
                let (x, y) = (p(at.0), p(at.1));
                let turn = if *angle == 0 {
                    String::new()
                } else {
                    format!(" transform=\"rotate({angle} {x} {y})\"")
                };
                let _ = writeln!(
                    o,
                    "<text x=\"{x}\" y=\"{y}\" font-family=\"{FONTS}\" font-size=\"{}\" text-anchor=\"{anchor}\" {}{turn}>{}</text>",
                    p(*em),
                    paint("fill", *color),
                    escape(text)
                );
            }
        }
    }
    o.push_str("</svg>\n");
    o
}

fn paint(what: &str, c: Rgba) -> String {
    let mut s = format!("{what}=\"#{:02x}{:02x}{:02x}\"", c.rgb.0, c.rgb.1, c.rgb.2);
    if c.alpha < 1.0 {
        let _ = write!(s, " {what}-opacity=\"{}\"", num(c.alpha));
    }
    s
}

fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
