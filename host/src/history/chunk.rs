//! Sealed chunks: `CHUNK_ROWS` consecutive rows, column by column, with the block
//! summaries of every series, in one immutable file that is read through a memory map.
//! A chunk file is written beside its final name, synced, then renamed into place, so
//! a chunk either exists whole or not at all.
//!
//! Layout, in little-endian 8-byte words: a header (`MAGIC`, first row, rows, series,
//! the CRC-32 of everything after the header), the timestamps, each series' values, then
//! each series' block summaries, level by level, finest first. The checksum is verified
//! when a chunk is opened, so a flipped byte is reported by name, never served as a value.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use memmap2::Mmap;

use super::summaries::{BLOCK_ROWS, Block, Summaries};

#[cfg(target_endian = "big")]
compile_error!("history chunks are stored little-endian and read in place: big-endian targets are not supported");

/// Rows per chunk: a power of two, so a chunk's summaries end in one block for the whole
/// chunk.
pub const CHUNK_ROWS: usize = 32_768;
/// Summary levels per series: blocks of 16, 32, ... 32768 rows.
pub const LEVELS: usize = (CHUNK_ROWS / BLOCK_ROWS).trailing_zeros() as usize + 1;
const MAGIC: u64 = u64::from_le_bytes(*b"THCHUNK5");
/// Chunks of earlier formats, whose rows are laid out as now but whose summaries are not
/// (version 1: extremes without times; version 2: extremes of blocks from 8 rows up,
/// without first and last points; version 3: no checksum; version 4: no gaps in the
/// summaries); their summaries are rebuilt from their rows when opened.
const EARLIER_MAGICS: [u64; 4] = [
    u64::from_le_bytes(*b"THCHUNK1"),
    u64::from_le_bytes(*b"THCHUNK2"),
    u64::from_le_bytes(*b"THCHUNK3"),
    u64::from_le_bytes(*b"THCHUNK4"),
];
/// Header word holding the checksum of the body.
const CHECKSUM_WORD: usize = 4;
const HEADER_WORDS: usize = 8;
const BLOCK_WORDS: usize = size_of::<Block>() / 8;

/// Entries of each summary level of a full chunk.
pub(super) const fn level_len(level: usize) -> usize {
    CHUNK_ROWS / (BLOCK_ROWS << level)
}

/// Words of a series' summaries before level `level`; `level_offset(LEVELS)` is all of them.
const fn level_offset(level: usize) -> usize {
    let mut words = 0;
    let mut finer = 0;
    while finer < level {
        words += level_len(finer) * BLOCK_WORDS;
        finer += 1;
    }
    words
}

/// Words of a full chunk of `series` series.
const fn chunk_words(series: usize) -> usize {
    HEADER_WORDS + CHUNK_ROWS * (1 + series) + level_offset(LEVELS) * series
}

/// The rows of a full chunk, to be sealed.
pub struct ChunkData<'a> {
    pub first_row: u64,
    pub timestamps_ms: &'a [i64],
    /// Each series' values and summary levels.
    pub columns: Vec<(&'a [f64], Vec<&'a [Block]>)>,
}

/// The bytes of a sealed chunk: mapped from its file, or owned (histories kept in memory).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u64>),
}

/// How a chunk is opened: by the history's writer, which may rewrite a chunk of an
/// earlier format in place, or by a reader beside it, which never changes a file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    Writer,
    ReadOnly,
}

/// A sealed chunk, read in place.
pub struct Chunk {
    bytes: Bytes,
    series: usize,
    pub first_row: u64,
}

impl Chunk {
    pub fn file_name(index: usize) -> String {
        format!("chunk-{index:08}.bin")
    }

    /// Encodes a full chunk in memory.
    pub fn encode(data: &ChunkData) -> Chunk {
        let series = data.columns.len();
        let mut words = Vec::with_capacity(chunk_words(series));
        words.extend([MAGIC, data.first_row, CHUNK_ROWS as u64, series as u64, 0, 0, 0, 0]);
        words.extend(data.timestamps_ms.iter().map(|t| *t as u64));
        for (values, _) in &data.columns {
            words.extend(values.iter().map(|v| v.to_bits()));
        }
        for (_, levels) in &data.columns {
            for (level, blocks) in levels.iter().enumerate().take(LEVELS) {
                debug_assert_eq!(blocks.len(), level_len(level));
                words.extend(bytemuck::cast_slice::<Block, u64>(blocks));
            }
        }
        words[CHECKSUM_WORD] = u64::from(crc32fast::hash(bytemuck::cast_slice(&words[HEADER_WORDS..])));
        Chunk { bytes: Bytes::Owned(words), series, first_row: data.first_row }
    }

    /// Writes the chunk as `dir/name` (temporary file, sync, rename, directory sync) and
    /// returns it mapped from there, its owned copy released.
    pub fn persist(self, dir: &Path, name: &str) -> Result<Chunk> {
        let path = dir.join(name);
        super::write_atomically(&path, self.bytes())?;
        Chunk::open(&path, self.series, Access::Writer)
    }

    /// Maps a chunk file, checking its header, size and checksum. A chunk of an earlier
    /// format is brought to the current one: rewritten by the writer, converted in memory
    /// for a reader.
    pub fn open(path: &Path, series: usize, access: Access) -> Result<Chunk> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: chunk files are immutable once renamed into place, the writer holds the
        // folder's lock, and the map is read-only.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let magic = map.get(..8).map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes")));
        if magic.is_some_and(|magic| EARLIER_MAGICS.contains(&magic)) {
            return Chunk::rewrite_summaries(path, series, &map, access);
        }
        let expected = chunk_words(series) * 8;
        ensure!(map.len() == expected, "{}: {} bytes, a chunk of {series} series has {expected}", path.display(), map.len());
        let header: &[u64] = bytemuck::try_cast_slice(&map[..HEADER_WORDS * 8]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(header[0] == MAGIC, "{}: not a history chunk", path.display());
        check_shape(path, header, series)?;
        let checksum = u64::from(crc32fast::hash(&map[HEADER_WORDS * 8..]));
        ensure!(
            header[CHECKSUM_WORD] == checksum,
            "{}: damaged: its checksum is {:08x}, its contents give {checksum:08x}; the file was changed after it was \
             sealed. Restore it from a backup (no value of it is served)",
            path.display(),
            header[CHECKSUM_WORD]
        );
        Ok(Chunk { first_row: header[1], bytes: Bytes::Mapped(map), series })
    }

    /// Rewrites a chunk of an earlier format: its rows are the same, its summaries are
    /// rebuilt from them.
    fn rewrite_summaries(path: &Path, series: usize, map: &[u8], access: Access) -> Result<Chunk> {
        let rows_words = HEADER_WORDS + CHUNK_ROWS * (1 + series);
        ensure!(map.len() > rows_words * 8, "{}: {} bytes, too short for a chunk of {series} series", path.display(), map.len());
        let words: &[u64] = bytemuck::try_cast_slice(&map[..rows_words * 8]).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
        check_shape(path, &words[..HEADER_WORDS], series)?;
        let first_row = words[1];
        let timestamps: Vec<i64> = words[HEADER_WORDS..HEADER_WORDS + CHUNK_ROWS].iter().map(|word| *word as i64).collect();
        let columns: Vec<Vec<f64>> = (0..series)
            .map(|column| {
                let start = HEADER_WORDS + CHUNK_ROWS * (1 + column);
                words[start..start + CHUNK_ROWS].iter().map(|word| f64::from_bits(*word)).collect()
            })
            .collect();
        let summaries: Vec<Summaries> = columns
            .iter()
            .map(|values| {
                let mut summaries = Summaries::default();
                for len in 1..=CHUNK_ROWS {
                    summaries.on_push(&values[..len], &timestamps[..len], first_row);
                }
                summaries
            })
            .collect();
        let data = ChunkData {
            first_row,
            timestamps_ms: &timestamps,
            columns: columns.iter().zip(&summaries).map(|(values, summaries)| (values.as_slice(), summaries.levels().collect())).collect(),
        };
        let chunk = Chunk::encode(&data);
        if access == Access::ReadOnly {
            return Ok(chunk);
        }
        tracing::info!("rewriting {} in the current chunk format", path.display());
        let (dir, name) = split_path(path)?;
        chunk.persist(dir, name)
    }

    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(map) => map,
            Bytes::Owned(words) => bytemuck::cast_slice(words),
        }
    }

    fn words(&self, first: usize, count: usize) -> &[u8] {
        &self.bytes()[first * 8..(first + count) * 8]
    }

    pub fn timestamps(&self) -> &[i64] {
        bytemuck::cast_slice(self.words(HEADER_WORDS, CHUNK_ROWS))
    }

    pub fn values(&self, series: usize) -> &[f64] {
        bytemuck::cast_slice(self.words(HEADER_WORDS + CHUNK_ROWS * (1 + series), CHUNK_ROWS))
    }

    /// The summary levels of one series, finest first.
    pub fn levels(&self, series: usize) -> [&[Block]; LEVELS] {
        // Offsets as constants: reads resolve the levels of every chunk they touch.
        const OFFSETS: [usize; LEVELS] = {
            let mut offsets = [0; LEVELS];
            let mut level = 0;
            while level < LEVELS {
                offsets[level] = level_offset(level);
                level += 1;
            }
            offsets
        };
        let start = HEADER_WORDS + CHUNK_ROWS * (1 + self.series) + level_offset(LEVELS) * series;
        std::array::from_fn(|level| bytemuck::cast_slice(self.words(start + OFFSETS[level], level_len(level) * BLOCK_WORDS)))
    }
}

/// The header's row and series counts are what this history expects.
fn check_shape(path: &Path, header: &[u64], series: usize) -> Result<()> {
    ensure!(
        header[2] == CHUNK_ROWS as u64 && header[3] == series as u64,
        "{}: a chunk of {} rows and {} series, expected {CHUNK_ROWS} and {series}",
        path.display(),
        header[2],
        header[3]
    );
    Ok(())
}

fn split_path(path: &Path) -> Result<(&Path, &str)> {
    let dir = path.parent().context("a chunk path has a folder")?;
    let name = path.file_name().and_then(|name| name.to_str()).context("a chunk file name is text")?;
    Ok((dir, name))
}

pub fn chunk_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(Chunk::file_name(index))
}

/// Makes renames and new files in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).with_context(|| format!("cannot sync directory {}", dir.display()))
}
