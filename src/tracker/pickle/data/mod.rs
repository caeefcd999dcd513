//! A pickle decoded as data only, class instances included: what serde-pickle cannot do (it
//! drops unknown globals, so an APScheduler trigger object or a `datetime` loses its class and
//! state). Nothing is imported or called: `GLOBAL`/`STACK_GLOBAL` become [`Data::Global`] (a
//! module and a name), `REDUCE` a [`Data::Reduce`] record (callable and argument tuple),
//! `NEWOBJ`/`OBJ`/`INST` an [`Data::Object`] and `BUILD` sets its state. The caller interprets
//! the records it knows (`datetime.datetime`, `zoneinfo.ZoneInfo`, ...) and nothing else.
//!
//! Bounded on its own (this decoder does not mirror serde-pickle, so [`super::check`] does not
//! apply): nothing is copied while parsing (memo references and `DUP` stay references, so parse
//! memory is linear in the input), every container's nesting depth is kept and refused beyond
//! the budget (so neither building nor dropping a value recurses deeper than that), and the
//! final expansion of references counts every value and byte it produces against the budget
//! (a self-referencing pickle exhausts it and is refused).

use std::collections::HashMap;

use super::{Budget, Refused};

/// The opcode loop (the one long function, kept apart from the value type and the helpers it
/// calls).
mod run;

/// A decoded value. `Ref` exists only while parsing; [`decode`] returns values without it.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits (its little-endian two's complement bytes).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Data>),
    /// Lists, sets and frozensets.
    List(Vec<Data>),
    Dict(Vec<(Data, Data)>),
    /// `module.name`, never resolved.
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)`, never called.
    Reduce {
        callable: Box<Data>,
        args: Box<Data>,
    },
    /// An instance: its class, constructor arguments and `BUILD` state (or `None`).
    Object {
        class: Box<Data>,
        args: Box<Data>,
        state: Box<Data>,
    },
    #[doc(hidden)]
    Ref(u64),
}

impl Data {
    /// A dict's value for a string key.
    pub fn get(&self, key: &str) -> Option<&Data> {
        match self {
            Data::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Data::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Data::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Data::Int(i) => Some(*i),
            Data::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// A global's `module.name` (directly, or as the class of an object or the callable of a
    /// reduce: what the value is an instance of).
    pub fn class_path(&self) -> Option<String> {
        match self {
            Data::Global { module, name } => Some(format!("{module}.{name}")),
            Data::Object { class, .. } => class.class_path(),
            Data::Reduce { callable, .. } => callable.class_path(),
            _ => None,
        }
    }

    /// Items of a tuple or list.
    pub fn items(&self) -> Option<&[Data]> {
        match self {
            Data::Tuple(v) | Data::List(v) => Some(v),
            _ => None,
        }
    }
}

/// Stack entry: a value and its container depth (0 for scalars and references).
type Entry = (Data, u32);

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    budget: Budget,
    stack: Vec<Entry>,
    marks: Vec<usize>,
    memo: HashMap<u64, Entry>,
    /// Memo slots taken by `DUP` (ids above every id a pickle can name).
    privates: u64,
}

/// Decode `bytes` as data (see the module doc), within `budget`.
pub fn decode(bytes: &[u8], budget: Budget) -> Result<Data, Refused> {
    let mut d = Decoder {
        input: bytes,
        pos: 0,
        budget,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        privates: 0,
    };
    let (top, _) = d.run()?;
    if d.pos != d.input.len() {
        return Err(Refused::Malformed);
    }
    let mut counts = (0u64, 0u64);
    d.expand(top, budget.depth, &mut counts)
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Refused> {
        let end = self.pos.checked_add(n).ok_or(Refused::Malformed)?;
        let bytes = self.input.get(self.pos..end).ok_or(Refused::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn line(&mut self) -> Result<String, Refused> {
        let rest = self.input.get(self.pos..).ok_or(Refused::Malformed)?;
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(Refused::Malformed)?;
        let text = std::str::from_utf8(self.take(len + 1)?).map_err(|_| Refused::Malformed)?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }

    fn sized(&mut self, n: u64) -> Result<Vec<u8>, Refused> {
        if n > self.budget.bytes {
            return Err(Refused::TooManyBytes(self.budget.bytes));
        }
        let n = usize::try_from(n).map_err(|_| Refused::Malformed)?;
        Ok(self.take(n)?.to_vec())
    }

    fn text(&mut self, n: u64) -> Result<(), Refused> {
        let raw = self.sized(n)?;
        let s = String::from_utf8(raw).map_err(|_| Refused::Malformed)?;
        self.push(Data::Str(s))
    }

    fn push(&mut self, d: Data) -> Result<(), Refused> {
        self.stack.push((d, 0));
        Ok(())
    }

    fn segment_start(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Entry, Refused> {
        if self.stack.len() <= self.segment_start() {
            return Err(Refused::Malformed);
        }
        self.stack.pop().ok_or(Refused::Malformed)
    }

    fn pop_mark(&mut self) -> Result<Vec<Entry>, Refused> {
        let start = self.marks.pop().ok_or(Refused::Malformed)?;
        Ok(self.stack.split_off(start.min(self.stack.len())))
    }

    /// A container's depth from its children's; refused beyond the budget.
    fn container_depth<'e>(&self, children: impl Iterator<Item = &'e u32>) -> Result<u32, Refused> {
        let d = children.max().copied().unwrap_or(0).saturating_add(1);
        if d > self.budget.depth {
            return Err(Refused::TooDeep(self.budget.depth));
        }
        Ok(d)
    }

    fn container(&mut self, kind: u8, items: Vec<Entry>) -> Result<(), Refused> {
        let depth = self.container_depth(items.iter().map(|(_, d)| d))?;
        let values: Vec<Data> = items.into_iter().map(|(v, _)| v).collect();
        let data = match kind {
            b't' => Data::Tuple(values),
            b'd' => {
                if !values.len().is_multiple_of(2) {
                    return Err(Refused::Malformed);
                }
                let mut it = values.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Data::Dict(pairs)
            }
            _ => Data::List(values),
        };
        self.stack.push((data, depth));
        Ok(())
    }

    /// APPEND(S)/SETITEM(S)/ADDITEMS into the container on top (the memoized value itself when
    /// the top is a memo reference, as Python's unpickler mutates the one shared object).
    fn extend_top(&mut self, items: Vec<Entry>, pairs: bool) -> Result<(), Refused> {
        if self.stack.len() <= self.segment_start() {
            return Err(Refused::Malformed);
        }
        let max = self.budget.depth;
        let child_depth = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        let target = match self.stack.last_mut() {
            Some((Data::Ref(id), _)) => {
                let id = *id;
                self.memo.get_mut(&id).ok_or(Refused::Malformed)?
            }
            Some(top) => top,
            None => return Err(Refused::Malformed),
        };
        let depth = target.1.max(child_depth.saturating_add(1));
        if depth > max {
            return Err(Refused::TooDeep(max));
        }
        target.1 = depth;
        let values = items.into_iter().map(|(v, _)| v);
        match (&mut target.0, pairs) {
            (Data::List(list), false) => list.extend(values),
            (Data::Dict(dict), true) => {
                let values: Vec<Data> = values.collect();
                if !values.len().is_multiple_of(2) {
                    return Err(Refused::Malformed);
                }
                let mut it = values.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.push((k, v));
                }
            }
            _ => return Err(Refused::Malformed),
        }
        Ok(())
    }

    fn memoize(&mut self, id: u64) -> Result<(), Refused> {
        let entry = self.pop()?;
        self.memo.insert(id, entry);
        self.stack.push((Data::Ref(id), 0));
        Ok(())
    }

    fn get(&mut self, id: u64) -> Result<(), Refused> {
        if !self.memo.contains_key(&id) {
            return Err(Refused::Malformed);
        }
        self.push(Data::Ref(id))
    }

    /// A memo reference's string (module and class names of STACK_GLOBAL).
    fn string_of(&self, d: &Data) -> Result<String, Refused> {
        match d {
            Data::Str(s) => Ok(s.clone()),
            Data::Ref(id) => match self.memo.get(id) {
                Some((Data::Str(s), _)) => Ok(s.clone()),
                _ => Err(Refused::Malformed),
            },
            _ => Err(Refused::Malformed),
        }
    }

    fn record(&mut self, parts: [Entry; 3], object: bool) -> Result<(), Refused> {
        let depth = self.container_depth(parts.iter().map(|(_, d)| d))?;
        let [(a, _), (b, _), (c, _)] = parts;
        let data = if object {
            Data::Object {
                class: Box::new(a),
                args: Box::new(b),
                state: Box::new(c),
            }
        } else {
            Data::Reduce {
                callable: Box::new(a),
                args: Box::new(b),
            }
        };
        self.stack.push((data, depth));
        Ok(())
    }

    fn int(&mut self, bytes: Vec<u8>) -> Result<(), Refused> {
        if bytes.len() > 8 {
            return self.push(Data::BigInt(bytes));
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 8];
        buf[..bytes.len()].copy_from_slice(&bytes);
        self.push(Data::Int(i64::from_le_bytes(buf)))
    }

    /// The value with every memo reference replaced by a copy of what it names; every value
    /// and byte produced counts against the budget, and so does every level of nesting.
    fn expand(&self, d: Data, depth_left: u32, counts: &mut (u64, u64)) -> Result<Data, Refused> {
        counts.0 += 1;
        if counts.0 > self.budget.values {
            return Err(Refused::TooManyValues(self.budget.values));
        }
        let bytes = match &d {
            Data::Str(s) => s.len(),
            Data::Bytes(b) | Data::BigInt(b) => b.len(),
            _ => 0,
        };
        counts.1 += bytes as u64;
        if counts.1 > self.budget.bytes {
            return Err(Refused::TooManyBytes(self.budget.bytes));
        }
        let deeper = |s: &Self, v: Data, counts: &mut (u64, u64)| {
            let left = depth_left
                .checked_sub(1)
                .ok_or(Refused::TooDeep(s.budget.depth))?;
            s.expand(v, left, counts)
        };
        Ok(match d {
            Data::Ref(id) => {
                // A reference costs a level too: a chain of references to references (or a
                // cycle) ends at the depth limit instead of recursing without bound.
                let (value, _) = self.memo.get(&id).ok_or(Refused::Malformed)?;
                return deeper(self, value.clone(), counts);
            }
            Data::Tuple(v) => Data::Tuple(
                v.into_iter()
                    .map(|x| deeper(self, x, counts))
                    .collect::<Result<_, _>>()?,
            ),
            Data::List(v) => Data::List(
                v.into_iter()
                    .map(|x| deeper(self, x, counts))
                    .collect::<Result<_, _>>()?,
            ),
            Data::Dict(v) => Data::Dict(
                v.into_iter()
                    .map(|(k, x)| Ok((deeper(self, k, counts)?, deeper(self, x, counts)?)))
                    .collect::<Result<_, Refused>>()?,
            ),
            Data::Reduce { callable, args } => Data::Reduce {
                callable: Box::new(deeper(self, *callable, counts)?),
                args: Box::new(deeper(self, *args, counts)?),
            },
            Data::Object { class, args, state } => Data::Object {
                class: Box::new(deeper(self, *class, counts)?),
                args: Box::new(deeper(self, *args, counts)?),
                state: Box::new(deeper(self, *state, counts)?),
            },
            other => other,
        })
    }
}
