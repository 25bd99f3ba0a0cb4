//! One memory budget per instance: every linear memory and every table of a plugin's
//! instance count against its `limits.memory_mb` together, so extra memories or a huge
//! table cannot take the host beyond what the manifest grants.

use wasmtime::ResourceLimiter;

/// Bytes a table element takes in the host (a pointer, as wasmtime stores them).
const TABLE_ELEMENT_BYTES: usize = size_of::<usize>();

pub struct PluginLimiter {
    budget_bytes: usize,
    used_bytes: usize,
    /// The last growth allowed, given back if the growth then failed.
    last_grant: usize,
}

impl PluginLimiter {
    pub fn new(budget_bytes: usize) -> PluginLimiter {
        PluginLimiter { budget_bytes, used_bytes: 0, last_grant: 0 }
    }

    fn grow(&mut self, added: usize, what: &str) -> wasmtime::Result<bool> {
        let total = self.used_bytes.saturating_add(added);
        if total > self.budget_bytes {
            wasmtime::bail!(
                "growing {what} past the plugin's limit: {total} bytes of memories and tables together, {} allowed",
                self.budget_bytes
            );
        }
        self.used_bytes = total;
        self.last_grant = added;
        Ok(true)
    }
}

impl ResourceLimiter for PluginLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current), "memory")
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used_bytes -= std::mem::take(&mut self.last_grant);
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES), "a table")
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used_bytes -= std::mem::take(&mut self.last_grant);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut limiter = PluginLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 600 << 10, None).unwrap());
        // A second memory of the same instance counts against the same budget.
        let error = limiter.memory_growing(0, 600 << 10, None).unwrap_err().to_string();
        assert!(error.contains("growing memory past the plugin's limit"), "{error}");
        assert!(limiter.table_growing(0, 1000, None).unwrap());
        assert!(limiter.table_growing(1000, 1 << 20, None).unwrap_err().to_string().contains("growing a table"));
        limiter.memory_grow_failed(wasmtime::Error::msg("os")).unwrap();
        assert_eq!(limiter.used_bytes, 600 << 10, "a failed growth is given back");
    }
}
