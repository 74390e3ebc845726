//! NDJSON: one JSON object per row, members in column order, every column present (null kept).

use serde_json::Value;

use crate::EncodeError;

pub(crate) struct NdjsonEncoder {
    /// Per column, what comes before its value: `{"name":` for the first, `,"name":` after.
    keys: Vec<Vec<u8>>,
    buf: Vec<u8>,
    drained: u64,
}

impl NdjsonEncoder {
    pub(crate) fn new(columns: &[sof::Column]) -> Result<NdjsonEncoder, EncodeError> {
        let mut keys = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            let mut key = vec![if i == 0 { b'{' } else { b',' }];
            serde_json::to_writer(&mut key, c.name())
                .map_err(|e| EncodeError::column(c.name(), e.to_string()))?;
            key.push(b':');
            keys.push(key);
        }
        Ok(NdjsonEncoder {
            keys,
            buf: Vec::new(),
            drained: 0,
        })
    }

    pub(crate) fn push_row(&mut self, row: &[Value]) -> Result<(), EncodeError> {
        let start = self.buf.len();
        for (key, v) in self.keys.iter().zip(row) {
            self.buf.extend_from_slice(key);
            if let Err(e) = serde_json::to_writer(&mut self.buf, v) {
                self.buf.truncate(start);
                return Err(EncodeError::Write(format!("writing NDJSON: {e}")));
            }
        }
        self.buf.extend_from_slice(b"}\n");
        Ok(())
    }

    pub(crate) fn drain_ready(&mut self, out: &mut Vec<u8>) {
        self.drained += self.buf.len() as u64;
        out.append(&mut self.buf);
    }

    pub(crate) fn bytes_so_far(&self) -> u64 {
        self.drained + self.buf.len() as u64
    }
}
