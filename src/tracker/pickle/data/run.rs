//! The decoder's opcode loop: one match arm per pickle opcode, each calling the helpers of
//! [`super::Decoder`].

use super::{Data, Decoder, Entry};
use crate::tracker::pickle::Refused;

impl Decoder<'_> {
    pub(super) fn run(&mut self) -> Result<Entry, Refused> {
        loop {
            let op = self.byte()?;
            match op {
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() as u64 > u64::from(self.budget.depth) {
                        return Err(Refused::TooDeep(self.budget.depth));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    if self.stack.len() <= self.segment_start() {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP: the top moves into a private memo slot, both copies refer to it.
                b'2' => {
                    let id = (1 << 32) + self.privates;
                    self.privates += 1;
                    self.memoize(id)?;
                    self.push(Data::Ref(id))?;
                }
                b'p' => {
                    let id = self.line()?.parse().map_err(|_| Refused::Malformed)?;
                    self.memoize(id)?;
                }
                b'q' => {
                    let id = self.byte()?;
                    self.memoize(u64::from(id))?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.array::<4>()?);
                    self.memoize(u64::from(id))?;
                }
                0x94 => {
                    let id = self.memo.len() as u64 - self.privates;
                    self.memoize(id)?;
                }
                b'g' => {
                    let id = self.line()?.parse().map_err(|_| Refused::Malformed)?;
                    self.get(id)?;
                }
                b'h' => {
                    let id = self.byte()?;
                    self.get(u64::from(id))?;
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.array::<4>()?);
                    self.get(u64::from(id))?;
                }
                b'N' => self.push(Data::None)?,
                0x88 => self.push(Data::Bool(true))?,
                0x89 => self.push(Data::Bool(false))?,
                b'I' | b'L' => {
                    let line = self.line()?;
                    if line.len() > 4300 {
                        return Err(Refused::LongText(4300));
                    }
                    let d = match line.as_str() {
                        "01" => Data::Bool(true),
                        "00" => Data::Bool(false),
                        t => t
                            .trim_end_matches('L')
                            .parse()
                            .map(Data::Int)
                            .unwrap_or_else(|_| Data::BigInt(t.as_bytes().to_vec())),
                    };
                    self.push(d)?;
                }
                b'F' => {
                    let f = self.line()?.parse().map_err(|_| Refused::Malformed)?;
                    self.push(Data::Float(f))?;
                }
                // STRING (a quoted repr) and UNICODE (raw-unicode-escape): kept as written.
                b'S' | b'V' => {
                    let line = self.line()?;
                    let s = if op == b'S' {
                        line.trim_matches(['\'', '"']).to_string()
                    } else {
                        line
                    };
                    self.push(Data::Str(s))?;
                }
                b'G' => {
                    let f = f64::from_be_bytes(self.array::<8>()?);
                    self.push(Data::Float(f))?;
                }
                b'J' => {
                    let i = i32::from_le_bytes(self.array::<4>()?);
                    self.push(Data::Int(i64::from(i)))?;
                }
                b'K' => {
                    let i = self.byte()?;
                    self.push(Data::Int(i64::from(i)))?;
                }
                b'M' => {
                    let i = u16::from_le_bytes(self.array::<2>()?);
                    self.push(Data::Int(i64::from(i)))?;
                }
                0x8a => {
                    let n = self.byte()?;
                    let bytes = self.sized(u64::from(n))?;
                    self.int(bytes)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array::<4>()?);
                    let n = u64::try_from(n).map_err(|_| Refused::Malformed)?;
                    let bytes = self.sized(n)?;
                    self.int(bytes)?;
                }
                b'C' => {
                    let n = self.byte()?;
                    let b = self.sized(u64::from(n))?;
                    self.push(Data::Bytes(b))?;
                }
                b'U' | 0x8c => {
                    let n = self.byte()?;
                    self.text(u64::from(n))?;
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.array::<4>()?);
                    let n = u64::try_from(n).map_err(|_| Refused::Malformed)?;
                    self.text(n)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array::<4>()?);
                    let b = self.sized(u64::from(n))?;
                    self.push(Data::Bytes(b))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array::<4>()?);
                    self.text(u64::from(n))?;
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.array::<8>()?);
                    let b = self.sized(n)?;
                    self.push(Data::Bytes(b))?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.array::<8>()?);
                    self.text(n)?;
                }
                b')' => self.container(b't', Vec::new())?,
                b']' | 0x8f => self.container(b'l', Vec::new())?,
                b'}' => self.container(b'd', Vec::new())?,
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.container(b't', items)?;
                }
                b't' | b'l' | b'd' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.container(if op == 0x91 { b'l' } else { op }, items)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(vec![item], false)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], true)?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, false)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, true)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Data::Global { module, name })?;
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let name = self.string_of(&name)?;
                    let module = self.string_of(&module)?;
                    self.push(Data::Global { module, name })?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.record([callable, args, (Data::None, 0)], false)?;
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let args = self.pop_mark()?;
                    let depth = self.container_depth(args.iter().map(|(_, d)| d))?;
                    let args = Data::Tuple(args.into_iter().map(|(v, _)| v).collect());
                    let class = (Data::Global { module, name }, 0);
                    self.record([class, (args, depth), (Data::None, 0)], true)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(Refused::Malformed);
                    }
                    let class = items.remove(0);
                    let depth = self.container_depth(items.iter().map(|(_, d)| d))?;
                    let args = Data::Tuple(items.into_iter().map(|(v, _)| v).collect());
                    self.record([class, (args, depth), (Data::None, 0)], true)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.record([class, args, (Data::None, 0)], true)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.record([class, args, (Data::None, 0)], true)?;
                }
                // BUILD: the state goes into the object under it (through a memo reference:
                // the memoized object is the one that gets it).
                b'b' => {
                    let (state, state_depth) = self.pop()?;
                    let max = self.budget.depth;
                    if self.stack.len() <= self.segment_start() {
                        return Err(Refused::Malformed);
                    }
                    let target = match self.stack.last_mut() {
                        Some((Data::Ref(id), _)) => {
                            let id = *id;
                            self.memo.get_mut(&id).ok_or(Refused::Malformed)?
                        }
                        Some(top) => top,
                        None => return Err(Refused::Malformed),
                    };
                    let depth = target.1.max(state_depth.saturating_add(1));
                    if depth > max {
                        return Err(Refused::TooDeep(max));
                    }
                    target.1 = depth;
                    match &mut target.0 {
                        Data::Object { state: s, .. } => **s = state,
                        // A reduced value with state (e.g. a `set` subclass): kept with it.
                        Data::Reduce { .. } => {
                            let inner = std::mem::replace(&mut target.0, Data::None);
                            target.0 = Data::Object {
                                class: Box::new(inner),
                                args: Box::new(Data::Tuple(Vec::new())),
                                state: Box::new(state),
                            };
                        }
                        _ => return Err(Refused::Malformed),
                    }
                }
                _ => return Err(Refused::Malformed),
            }
        }
    }
}
