//! W3C trace context: a span's identity as it travels between processes (a `traceparent`
//! header, a field of a sync change) and with the writes it caused (a stored resource, a
//! tombstone), so whoever carries a change on continues its trace, on any replica.

/// A span's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

impl SpanContext {
    /// `00-TRACE-SPAN-01`.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", hex(&self.trace_id), hex(&self.span_id))
    }

    /// Parses a `traceparent`; `None` for anything malformed (or all-zero ids).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || parts.next().is_some() {
            return None;
        }
        let ctx = Self {
            trace_id: unhex(trace)?,
            span_id: unhex(span)?,
        };
        (ctx.trace_id != [0; 16] && ctx.span_id != [0; 8]).then_some(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let ctx = SpanContext {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
        };
        let text = ctx.traceparent();
        assert_eq!(text, format!("00-{}-{}-01", "ab".repeat(16), "01".repeat(8)));
        assert_eq!(SpanContext::parse(&text), Some(ctx));
        assert_eq!(SpanContext::parse("00-xyz-01-01"), None);
        assert_eq!(
            SpanContext::parse(&format!("00-{}-{}-01", "0".repeat(32), "01".repeat(8))),
            None
        );
        assert_eq!(SpanContext::parse(""), None);
    }
}
