//! PNG pictures people would rather look at than read: training curves, a confusion matrix,
//! and a recommendation grid (the query beside its top results with scores, titles, prices).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use lookalike::explain::{Explanation, Heatmap};
use lookalike::learn::eval::ClassificationReport;
use lookalike::learn::train::EpochRecord;
use lookalike::types::{PhotoBox, Scored};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("../assets/DejaVuSans.ttf"))
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font is valid"));
    });
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the picture: {e}")
}

type EpochChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Axes for a per-epoch curve: epochs 1..`epochs` across, 0..`y_max` up, grid drawn.
fn epoch_chart<'a, 'b>(
    area: &DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    epochs: f64,
    y_max: f64,
) -> Result<EpochChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(1.0..epochs, 0.0..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

/// Loss (train and validation) and validation accuracy per epoch, side by side; the best epoch marked.
pub fn history_png(history: &[EpochRecord], best_epoch: usize, accuracy_name: &str, path: &Path) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(550);
    let epochs = history.len().max(2) as f64;
    let max_loss = history
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .fold(0.0, f64::max)
        * 1.05;
    let series = |r: &EpochRecord, pick: fn(&EpochRecord) -> f64| (r.epoch as f64, pick(r));
    {
        let mut chart = epoch_chart(&left, "loss", epochs, max_loss.max(1e-6))?;
        for (name, colour, pick) in [
            (
                "train",
                BLUE,
                (|r: &EpochRecord| r.train_loss) as fn(&EpochRecord) -> f64,
            ),
            ("validation", RED, |r: &EpochRecord| r.val_loss),
        ] {
            chart
                .draw_series(LineSeries::new(
                    history.iter().map(|r| series(r, pick)),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(best_epoch as f64, 0.0), (best_epoch as f64, max_loss)],
                BLACK.mix(0.5),
            )))
            .map_err(plot_error)?
            .label(format!("best epoch ({best_epoch})"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.5)));
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_error)?;
    }
    let mut chart = epoch_chart(&right, &format!("validation {accuracy_name}"), epochs, 1.0)?;
    chart
        .draw_series(LineSeries::new(
            history.iter().map(|r| series(r, |r| r.val_accuracy)),
            GREEN.stroke_width(2),
        ))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Rows: true class; columns: predicted; cells shaded by share of the row, with counts.
pub fn confusion_png(report: &ClassificationReport, path: &Path) -> Result<()> {
    register_font();
    let n = report.classes.len().max(1) as i32;
    let cell = 56;
    let label_width = 150;
    let size = (label_width + n * cell + 20, label_width + n * cell + 40);
    let root = BitMapBackend::new(path, (size.0 as u32, size.1 as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    root.draw(&Text::new(
        format!("confusion matrix, accuracy {:.1} %", report.accuracy * 100.0),
        (10, 10),
        (FONT, 18),
    ))
    .map_err(plot_error)?;
    let top = label_width;
    for (i, row) in report.confusion.iter().enumerate() {
        let total: usize = row.iter().sum::<usize>().max(1);
        let y = top + i as i32 * cell;
        root.draw(&Text::new(report.classes[i].clone(), (8, y + cell / 2 - 7), (FONT, 13)))
            .map_err(plot_error)?;
        for (j, &count) in row.iter().enumerate() {
            let x = label_width + j as i32 * cell;
            let share = count as f64 / total as f64;
            let shade = RGBColor(
                (255.0 - 200.0 * share) as u8,
                (255.0 - 130.0 * share) as u8,
                255 - (40.0 * share) as u8,
            );
            root.draw(&Rectangle::new([(x, y), (x + cell - 2, y + cell - 2)], shade.filled()))
                .map_err(plot_error)?;
            let colour = if share > 0.6 { WHITE } else { BLACK };
            root.draw(&Text::new(
                count.to_string(),
                (x + cell / 2 - 8, y + cell / 2 - 8),
                (FONT, 15).into_font().color(&colour),
            ))
            .map_err(plot_error)?;
        }
    }
    for (j, class) in report.classes.iter().enumerate() {
        let x = label_width + j as i32 * cell + cell / 2;
        let style = (FONT, 13).into_font().transform(FontTransform::Rotate270);
        root.draw(&Text::new(class.clone(), (x - 7, top - 6), style))
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

const TILE: u32 = 200;

/// `image` reduced to fit a tile, its shape kept.
fn fitted(image: &image::RgbImage) -> image::RgbImage {
    let (w, h) = image.dimensions();
    let scale = (TILE as f32 / w.max(h).max(1) as f32).min(1.0);
    let (tw, th) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    image::imageops::thumbnail(image, tw, th)
}

fn thumbnail(image: &image::RgbImage) -> (u32, u32, Vec<u8>) {
    let thumb = fitted(image);
    (thumb.width(), thumb.height(), thumb.into_raw())
}

fn shorten(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(chars - 1).collect::<String>())
    }
}

/// The picture being drawn, with its photos as tiles and text beside them.
struct Sheet<'a> {
    root: DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
}

impl<'a> Sheet<'a> {
    fn new(path: &'a Path, size: (u32, u32)) -> Result<Self> {
        register_font();
        let root = BitMapBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        Ok(Self { root })
    }

    /// `image` as a tile at `(x, y)` (a grey square when there is none).
    fn tile(&self, x: i32, y: i32, image: Option<&image::RgbImage>) -> Result<()> {
        let Some(image) = image else {
            return self
                .root
                .draw(&Rectangle::new(
                    [(x, y), (x + TILE as i32, y + TILE as i32)],
                    BLACK.mix(0.1).filled(),
                ))
                .map_err(plot_error);
        };
        let (w, h, buffer) = thumbnail(image);
        let offset = ((TILE - w) / 2) as i32;
        let element: BitMapElement<(i32, i32)> = BitMapElement::with_owned_buffer((x + offset, y), (w, h), buffer)
            .ok_or_else(|| anyhow!("thumbnail buffer has the wrong size"))?;
        self.root.draw(&element).map_err(plot_error)
    }

    /// A hit's rank, score and price, title and category, as lines from `(x, y)` down.
    fn caption(&self, x: i32, y: i32, rank: usize, hit: &Scored, score_name: &str) -> Result<()> {
        let p = &hit.product;
        let title = shorten(p.info.title.as_deref().unwrap_or(&p.id), 26);
        let price = p.info.price.map(|v| format!("  ${v:.2}")).unwrap_or_default();
        let lines = [
            (format!("#{rank} {score_name} {:.3}{price}", hit.score), BLACK.to_rgba()),
            (title, BLACK.to_rgba()),
            (shorten(p.info.category.as_deref().unwrap_or(""), 30), BLACK.mix(0.6)),
        ];
        for (n, (text, colour)) in lines.into_iter().enumerate() {
            self.root
                .draw(&Text::new(
                    text,
                    (x, y + n as i32 * 19),
                    (FONT, 14).into_font().color(&colour),
                ))
                .map_err(plot_error)?;
        }
        Ok(())
    }

    fn text(&self, text: &str, at: (i32, i32)) -> Result<()> {
        self.root.draw(&Text::new(text, at, (FONT, 16))).map_err(plot_error)
    }

    fn present(self) -> Result<()> {
        self.root.present().map_err(plot_error)
    }
}

/// The photo a hit matched by, read again from its file (`None` when it no longer reads).
fn matched_photo(hit: &Scored) -> Option<image::RgbImage> {
    lookalike::image::load_image(Path::new(hit.matched_path())).ok()
}

/// The query photo, then each hit's photo with its rank, score, title and price.
pub fn recommendation_grid(query: &image::RgbImage, hits: &[Scored], score_name: &str, path: &Path) -> Result<()> {
    let columns = 5u32;
    let tile_height = TILE + 70;
    let rows = (hits.len() as u32).div_ceil(columns).max(1);
    let width = 20 + (columns + 1) * (TILE + 20);
    let height = 20 + rows * (tile_height + 20);
    let sheet = Sheet::new(path, (width, height))?;
    sheet.tile(20, 20, Some(query))?;
    sheet.text("query", (20, 20 + TILE as i32 + 8))?;
    // A rule between the query and its results.
    let rule_x = (TILE + 30) as i32;
    sheet
        .root
        .draw(&PathElement::new(
            vec![(rule_x, 10), (rule_x, height as i32 - 10)],
            BLACK.mix(0.2),
        ))
        .map_err(plot_error)?;
    for (i, hit) in hits.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let x = (20 + (col + 1) * (TILE + 20)) as i32;
        let y = (20 + row * (tile_height + 20)) as i32;
        // The view that matched, not always the main photo.
        sheet.tile(x, y, matched_photo(hit).as_ref())?;
        sheet.caption(x, y + TILE as i32 + 6, i + 1, hit, score_name)?;
    }
    sheet.present()
}

/// Why each hit matched, a row each: the query photo and the hit's matched photo, each with its
/// heat map laid over it and the box that carried the match, then the hit's rank, score and title.
pub fn explanation_grid(
    query: &image::RgbImage,
    hits: &[Scored],
    explanations: &[Option<Explanation>],
    score_name: &str,
    path: &Path,
) -> Result<()> {
    let row_height = TILE + 20;
    let text_x = (20 + 2 * (TILE + 20)) as i32;
    let (width, height) = (text_x as u32 + 300, 20 + (hits.len() as u32).max(1) * row_height + 30);
    let sheet = Sheet::new(path, (width, height))?;
    sheet.text("query", (20, 10))?;
    sheet.text("result", ((TILE + 40) as i32, 10))?;
    for (i, hit) in hits.iter().enumerate() {
        let y = (40 + i as u32 * row_height) as i32;
        let matched = matched_photo(hit);
        let explained = explanations.get(i).and_then(Option::as_ref);
        let (query_tile, matched_tile) = match (explained, &matched) {
            (Some(e), Some(matched)) => (
                overlaid(query, &e.query_heatmap, &e.query_box, e.query_photo),
                Some(overlaid(matched, &e.match_heatmap, &e.match_box, e.match_photo)),
            ),
            _ => (query.clone(), matched),
        };
        sheet.tile(20, y, Some(&query_tile))?;
        sheet.tile((TILE + 40) as i32, y, matched_tile.as_ref())?;
        sheet.caption(text_x, y + 10, i + 1, hit, score_name)?;
        if let Some(e) = explained {
            let share = format!("backbone cosine {:.3}", e.backbone_cosine);
            sheet
                .root
                .draw(&Text::new(
                    share,
                    (text_x, y + 70),
                    (FONT, 13).into_font().color(&BLACK.mix(0.6)),
                ))
                .map_err(plot_error)?;
        }
    }
    sheet.present()
}

/// `image` reduced to a tile with `heat` laid over it (the hotter, the redder and then yellower,
/// interpolated between cell centres; cold parts as they are) and `region` outlined. `photo` is
/// the size in which the box counts.
fn overlaid(image: &image::RgbImage, heat: &Heatmap, region: &PhotoBox, photo: (u32, u32)) -> image::RgbImage {
    let mut tile = fitted(image);
    let (w, h) = tile.dimensions();
    let hottest = heat.values.iter().copied().fold(0.0f32, f32::max);
    let at = |column: isize, row: isize| -> f32 {
        let column = column.clamp(0, heat.width as isize - 1) as usize;
        let row = row.clamp(0, heat.height as isize - 1) as usize;
        heat.values[row * heat.width + column] / hottest
    };
    if hottest > 0.0 {
        for (x, y, pixel) in tile.enumerate_pixels_mut() {
            let fx = (x as f32 + 0.5) * heat.width as f32 / w as f32 - 0.5;
            let fy = (y as f32 + 0.5) * heat.height as f32 / h as f32 - 0.5;
            let (cx, cy) = (fx.floor(), fy.floor());
            let (tx, ty) = (fx - cx, fy - cy);
            let (cx, cy) = (cx as isize, cy as isize);
            let top = at(cx, cy) * (1.0 - tx) + at(cx + 1, cy) * tx;
            let bottom = at(cx, cy + 1) * (1.0 - tx) + at(cx + 1, cy + 1) * tx;
            let value = top * (1.0 - ty) + bottom * ty;
            let colour = [255.0, 255.0 * value, 0.0];
            let alpha = 0.65 * value;
            for (channel, c) in pixel.0.iter_mut().zip(colour) {
                *channel = (f32::from(*channel) * (1.0 - alpha) + c * alpha) as u8;
            }
        }
    }
    let (sx, sy) = (w as f32 / photo.0.max(1) as f32, h as f32 / photo.1.max(1) as f32);
    let (x0, y0) = ((region.x0 * sx) as u32, (region.y0 * sy) as u32);
    let (x1, y1) = (((region.x1 * sx) as u32).min(w), ((region.y1 * sy) as u32).min(h));
    let outline = image::Rgb([0, 160, 255]);
    for thickness in 0..3u32 {
        for x in x0..x1 {
            for y in [y0 + thickness, y1.saturating_sub(1 + thickness)] {
                if y < h {
                    tile.put_pixel(x, y, outline);
                }
            }
        }
        for y in y0..y1 {
            for x in [x0 + thickness, x1.saturating_sub(1 + thickness)] {
                if x < w {
                    tile.put_pixel(x, y, outline);
                }
            }
        }
    }
    tile
}
