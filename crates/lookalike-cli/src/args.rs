//! Parsers for numeric flags: every number on the command line is checked against what it can
//! mean, so a bad one is a usage error (exit 2) instead of a panic, a wrap-around or an empty
//! result later.

/// A whole number from `LO` to `HI`.
pub fn count<const LO: usize, const HI: usize>(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("{s:?} is not a whole number"))?;
    if !(LO..=HI).contains(&n) {
        return Err(format!("{n} is not between {LO} and {HI}"));
    }
    Ok(n)
}

fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !x.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    Ok(x)
}

fn within(s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let x = finite(s)?;
    if !(lo..=hi).contains(&x) {
        return Err(format!("{x} is not between {lo} and {hi}"));
    }
    Ok(x)
}

/// A price: finite, not negative.
pub fn price(s: &str) -> Result<f64, String> {
    within(s, 0.0, f64::MAX)
}

/// A share from 0 to 1.
pub fn fraction(s: &str) -> Result<f32, String> {
    within(s, 0.0, 1.0).map(|x| x as f32)
}

/// A part of a photo, `x0,y0,x1,y1` in its pixels.
pub fn photo_box(s: &str) -> Result<lookalike::types::PhotoBox, String> {
    lookalike::types::PhotoBox::parse(s).map_err(|e| e.to_string())
}

/// A dropout probability: from 0, below 1.
pub fn dropout(s: &str) -> Result<f32, String> {
    within(s, 0.0, 0.99).map(|x| x as f32)
}

/// A cosine similarity, from -1 to 1.
pub fn similarity(s: &str) -> Result<f32, String> {
    within(s, -1.0, 1.0).map(|x| x as f32)
}

/// Milliseconds of batching window: from 0 to 1000.
pub fn window_ms(s: &str) -> Result<f64, String> {
    within(s, 0.0, 1000.0)
}

/// A duration in seconds for a benchmark: above 0, at most a day.
pub fn seconds(s: &str) -> Result<f64, String> {
    let x = within(s, 0.0, 86_400.0)?;
    if x == 0.0 {
        return Err("the duration must be above 0".into());
    }
    Ok(x)
}

/// A positive training hyper-parameter (learning rate, margin): above 0, at most 100.
pub fn positive(s: &str) -> Result<f32, String> {
    let x = within(s, 0.0, 100.0)?;
    if x == 0.0 {
        return Err("the value must be above 0".into());
    }
    Ok(x as f32)
}

/// A non-negative training hyper-parameter (weight decay): from 0 to 100.
pub fn non_negative(s: &str) -> Result<f32, String> {
    within(s, 0.0, 100.0).map(|x| x as f32)
}

/// A web origin: `scheme://host[:port]` with no path (as browsers send it in `Origin`), or `*`.
pub fn origin(s: &str) -> Result<axum::http::HeaderValue, String> {
    let s = s.trim().trim_end_matches('/');
    let shaped = s == "*"
        || s.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '?', '#', ' ', '@'])
        });
    if !shaped {
        return Err(format!(
            "{s:?} is not an origin like https://shop.example or http://127.0.0.1:8080"
        ));
    }
    axum::http::HeaderValue::from_str(s).map_err(|e| e.to_string())
}

/// The weight of a colour signature beside unit features: above 0, at most 4.
pub fn colour_weight(s: &str) -> Result<f32, String> {
    let x = within(s, 0.0, 4.0)?;
    if x == 0.0 {
        return Err("the weight must be above 0".into());
    }
    Ok(x as f32)
}

/// `FOLDER=CATEGORY` (for `eval kinds`): neither side empty.
pub fn kind(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((folder, category)) if !folder.trim().is_empty() && !category.trim().is_empty() => {
            Ok((folder.trim().to_string(), category.trim().to_string()))
        }
        _ => Err(format!("{s:?} is not FOLDER=CATEGORY")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_their_meaning_are_refused() {
        assert_eq!(count::<1, 10>("3"), Ok(3));
        assert!(count::<1, 10>("0").is_err());
        assert!(count::<1, 10>("-1").is_err());
        assert!(count::<1, 10>("99999999999999999999999").is_err());
        assert!(price("NaN").is_err());
        assert!(price("inf").is_err());
        assert!(price("1e400").is_err());
        assert!(price("-2").is_err());
        assert_eq!(price("19.5"), Ok(19.5));
        assert!(window_ms("inf").is_err());
        assert!(window_ms("2000").is_err());
        assert!(fraction("1.5").is_err());
        assert!(similarity("-1.5").is_err());
        assert!(seconds("0").is_err());
        assert!(positive("0").is_err());
        assert_eq!(origin("https://shop.example/").unwrap(), "https://shop.example");
        assert!(origin("http://127.0.0.1:8080").is_ok() && origin("*").is_ok());
        assert!(origin("shop.example").is_err() && origin("https://shop.example/page").is_err());
    }
}
