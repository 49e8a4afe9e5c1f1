//! PNG pictures people would rather look at than read: training curves, a confusion matrix,
//! and a recommendation grid (the query beside its top results with scores, titles, prices).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use lookalike::learn::eval::ClassificationReport;
use lookalike::learn::train::EpochRecord;
use lookalike::types::Scored;
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

fn thumbnail(image: &image::RgbImage) -> (u32, u32, Vec<u8>) {
    let thumb = image::imageops::thumbnail(image, TILE, TILE);
    (thumb.width(), thumb.height(), thumb.into_raw())
}

fn shorten(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(chars - 1).collect::<String>())
    }
}

/// The query photo, then each hit's photo with its rank, score, title and price.
pub fn recommendation_grid(query: &image::RgbImage, hits: &[Scored], score_name: &str, path: &Path) -> Result<()> {
    register_font();
    let columns = 5u32;
    let tile_height = TILE + 70;
    let rows = (hits.len() as u32).div_ceil(columns).max(1);
    let width = 20 + (columns + 1) * (TILE + 20);
    let height = 20 + rows * (tile_height + 20);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let draw_image = |x: i32, y: i32, image: &image::RgbImage| -> Result<()> {
        let (w, h, buffer) = thumbnail(image);
        let offset = ((TILE - w) / 2) as i32;
        let element: BitMapElement<(i32, i32)> = BitMapElement::with_owned_buffer((x + offset, y), (w, h), buffer)
            .ok_or_else(|| anyhow!("thumbnail buffer has the wrong size"))?;
        root.draw(&element).map_err(plot_error)
    };
    draw_image(20, 20, query)?;
    root.draw(&Text::new("query", (20, 20 + TILE as i32 + 8), (FONT, 16)))
        .map_err(plot_error)?;
    // A rule between the query and its results.
    let rule_x = (TILE + 30) as i32;
    root.draw(&PathElement::new(
        vec![(rule_x, 10), (rule_x, height as i32 - 10)],
        BLACK.mix(0.2),
    ))
    .map_err(plot_error)?;
    for (i, hit) in hits.iter().enumerate() {
        let (p, score) = (&hit.product, hit.score);
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let x = (20 + (col + 1) * (TILE + 20)) as i32;
        let y = (20 + row * (tile_height + 20)) as i32;
        // The view that matched, not always the main photo.
        let shown = p.image_paths().nth(hit.image).unwrap_or(&p.image_path);
        match lookalike::image::load_image(Path::new(shown)) {
            Ok(image) => draw_image(x, y, &image)?,
            Err(_) => root
                .draw(&Rectangle::new(
                    [(x, y), (x + TILE as i32, y + TILE as i32)],
                    BLACK.mix(0.1).filled(),
                ))
                .map_err(plot_error)?,
        }
        let title = shorten(p.info.title.as_deref().unwrap_or(&p.id), 26);
        let price = p.info.price.map(|v| format!("  ${v:.2}")).unwrap_or_default();
        let lines = [
            (format!("#{} {score_name} {:.3}{price}", i + 1, score), BLACK.to_rgba()),
            (title, BLACK.to_rgba()),
            (shorten(p.info.category.as_deref().unwrap_or(""), 30), BLACK.mix(0.6)),
        ];
        for (n, (text, colour)) in lines.into_iter().enumerate() {
            root.draw(&Text::new(
                text,
                (x, y + TILE as i32 + 6 + n as i32 * 19),
                (FONT, 14).into_font().color(&colour),
            ))
            .map_err(plot_error)?;
        }
    }
    root.present().map_err(plot_error)?;
    Ok(())
}
