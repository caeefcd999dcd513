//! The scanner's stack machine: what each opcode does to serde-pickle's stack, as sizes.

use super::{Item, MAX_INT_DIGITS, Node, Refused, Scanner};

impl Scanner<'_> {
    /// Walk the opcodes to STOP, keeping serde-pickle's stack as sizes; returns the value
    /// STOP pops. One arm per opcode in one match, on purpose: it reads as serde-pickle's own
    /// dispatch (and pickletools' opcode table), so each arm can be checked against both; split
    /// up, the stack effects of related opcodes would be spread over several functions.
    pub(super) fn run(&mut self) -> Result<Item, Refused> {
        loop {
            let op = self.byte()?;
            match op {
                // PROTO, FRAME: headers.
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                // STOP
                b'.' => return self.pop(),
                // MARK: serde-pickle allocates a 128-value stack per open mark; legitimate
                // pickles open at most one per nesting level.
                b'(' => {
                    if self.marks.len() as u64 > u64::from(self.budget.depth) {
                        return Err(Refused::TooDeep(self.budget.depth));
                    }
                    self.marks.push(self.stack.len());
                }
                // POP: the stack top, or the whole mark if its segment is empty.
                b'0' => {
                    if self.segment_empty() {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP clones the top (a memo reference is resolved to a copy of its value).
                b'2' => {
                    let top = match self.stack.last() {
                        Some(t) if !self.segment_empty() => t.clone(),
                        _ => return Err(Refused::Malformed),
                    };
                    let copy = match top {
                        Item::Node(n) => {
                            self.work(n.values, n.bytes)?;
                            n
                        }
                        memo_ref => self.resolve(memo_ref)?,
                    };
                    self.push(Item::Node(copy))?;
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let id = self.line_number()?;
                    self.memoize(id)?;
                }
                b'q' => {
                    let id = self.take(1)?[0];
                    self.memoize(u32::from(id))?;
                }
                b'r' => {
                    let id = self.u32_le()?;
                    self.memoize(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).map_err(|_| Refused::Malformed)?;
                    self.memoize(id)?;
                }
                // GET, BINGET, LONG_BINGET
                b'g' => {
                    let id = self.line_number()?;
                    self.get(id)?;
                }
                b'h' => {
                    let id = self.take(1)?[0];
                    self.get(u32::from(id))?;
                }
                b'j' => {
                    let id = self.u32_le()?;
                    self.get(id)?;
                }
                // NONE, NEWTRUE, NEWFALSE
                b'N' | 0x88 | 0x89 => self.push_new(Node::scalar(0))?,
                // INT, LONG (text lines): parsing decimal digits into a big integer takes time
                // quadratic in their number, so at most as many as Python itself converts
                // (`sys.int_info.default_max_str_digits`).
                b'I' | b'L' => {
                    let n = self.line()?.len();
                    // Sign, `L` suffix and newline besides the digits.
                    if n > MAX_INT_DIGITS + 3 {
                        return Err(Refused::LongText(MAX_INT_DIGITS));
                    }
                    self.push_new(Node::scalar(n as u64))?;
                }
                // FLOAT, STRING, UNICODE (text lines, linear to parse)
                b'F' | b'S' | b'V' => {
                    let n = self.line()?.len() as u64;
                    self.push_new(Node::scalar(n))?;
                }
                // BINFLOAT, BININT, BININT1, BININT2
                b'G' => self.scalar_fixed(8)?,
                b'J' => self.scalar_fixed(4)?,
                b'K' => self.scalar_fixed(1)?,
                b'M' => self.scalar_fixed(2)?,
                // LONG1, SHORT_BINBYTES, SHORT_BINSTRING, SHORT_BINUNICODE: u8 length
                0x8a | b'C' | b'U' | 0x8c => {
                    let n = u64::from(self.take(1)?[0]);
                    self.scalar_counted(n)?;
                }
                // LONG4, BINSTRING: i32 length (negative is an error in serde-pickle)
                0x8b | b'T' => {
                    let n = i32::from_le_bytes(self.array::<4>()?);
                    let n = u64::try_from(n).map_err(|_| Refused::Malformed)?;
                    self.scalar_counted(n)?;
                }
                // BINBYTES, BINUNICODE: u32 length
                b'B' | b'X' => {
                    let n = u64::from(self.u32_le()?);
                    self.scalar_counted(n)?;
                }
                // BINBYTES8, BINUNICODE8, BYTEARRAY8: u64 length
                0x8e | 0x8d | 0x96 => {
                    let n = u64::from_le_bytes(self.array::<8>()?);
                    self.scalar_counted(n)?;
                }
                // EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT, EMPTY_SET
                b')' | b']' | b'}' | 0x8f => self.push_new(Node::container())?,
                // TUPLE1..3
                0x85 => self.tuple_n(1)?,
                0x86 => self.tuple_n(2)?,
                0x87 => self.tuple_n(3)?,
                // TUPLE, LIST, DICT, FROZENSET: a container of the items since the mark.
                b't' | b'l' | b'd' | 0x91 => {
                    let items = self.pop_mark()?;
                    let mut node = Node::container();
                    for item in items {
                        node.add(item, self.budget.depth)?;
                    }
                    self.work(1, 0)?;
                    self.push(Item::Node(node))?;
                }
                // APPEND, SETITEM: the top one or two items into the container below.
                b'a' => {
                    let value = self.pop()?;
                    self.modify_top(vec![value])?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.modify_top(vec![key, value])?;
                }
                // APPENDS, SETITEMS, ADDITEMS: the items since the mark.
                b'e' | b'u' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.modify_top(items)?;
                }
                // GLOBAL: module and name lines; an opaque value.
                b'c' => {
                    self.line()?;
                    self.line()?;
                    self.push_new(Node::scalar(0))?;
                }
                // STACK_GLOBAL: two names from the stack (resolved, i.e. cloned if memoized).
                0x93 => {
                    for _ in 0..2 {
                        let name = self.pop()?;
                        self.resolve(name)?;
                    }
                    self.push_new(Node::scalar(0))?;
                }
                // REDUCE: callable(argtuple). serde-pickle only reduces set, frozenset, list,
                // bytearray, int, _codecs.encode and copyreg._reconstructor, whose result is at
                // most the (resolved) argument tuple; the last argument is resolved again.
                b'R' => {
                    let args = self.pop()?;
                    let args = self.resolve(args)?;
                    let global = self.pop()?;
                    self.resolve(global)?;
                    for &(id, level) in &args.refs {
                        if level == 1 {
                            let (v, b) = self.memo_size(id)?;
                            self.work(v, b)?;
                        }
                    }
                    self.push(Item::Node(args))?;
                }
                // INST (two lines, args since the mark), OBJ (args since the mark and a class),
                // NEWOBJ (class, args), NEWOBJ_EX (class, args, kwargs): an empty dict stands in.
                b'i' => {
                    self.line()?;
                    self.line()?;
                    self.pop_mark()?;
                    self.push_new(Node::container())?;
                }
                b'o' => {
                    self.pop_mark()?;
                    self.pop()?;
                    self.push_new(Node::container())?;
                }
                0x81 => {
                    self.pop()?;
                    self.pop()?;
                    self.push_new(Node::container())?;
                }
                0x92 => {
                    for _ in 0..3 {
                        self.pop()?;
                    }
                    self.push_new(Node::container())?;
                }
                // BUILD: the state replaces the object under it.
                b'b' => {
                    let state = self.pop()?;
                    self.pop()?;
                    self.push(state)?;
                }
                // PERSID, BINPERSID, EXT1/2/4, NEXT_BUFFER, READONLY_BUFFER and anything
                // unknown: serde-pickle refuses them too.
                _ => return Err(Refused::Malformed),
            }
        }
    }
}
