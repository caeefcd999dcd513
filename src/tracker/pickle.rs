//! A bounded pre-scan of a pickle before serde-pickle decodes it.
//!
//! serde-pickle (1.2, the newest) runs no code, but its `DeOptions` have no limits: it converts
//! the decoded value recursively (a deeply nested pickle overflows the stack and aborts the
//! process, and so does dropping such a value), every `MARK` allocates room for 128 values, and
//! each memo reference is expanded by cloning the memoized value (`DUP` clones too), so a pickle
//! of a few hundred KB can stand for 10^10 values. No crate offers a limited unpickler (the
//! `pickled` fork neither), so this scanner walks the opcode stream once, without recursion,
//! mirroring serde-pickle's stack machine closely enough to bound what it would build: the
//! nesting depth of every value, the values and bytes it would allocate or clone while parsing,
//! and the size of the final value with every memo reference expanded. Anything it cannot model
//! (an opcode serde-pickle does not support, a malformed stream) is refused as well: the caller
//! then keeps the bytes as hex, which is what a failed decode yields anyway.

use std::collections::HashMap;

/// Digits of a text integer (protocols 0 and 1 write them so): Python's own default limit.
const MAX_INT_DIGITS: usize = 4300;

/// A pickle the scanner refuses, and why (shown to users in the stored result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("nested deeper than {0} levels")]
    TooDeep(u32),
    #[error("expands to more than {0} values")]
    TooManyValues(u64),
    #[error("expands to more than {0} bytes")]
    TooManyBytes(u64),
    #[error("has an integer written with more than {0} digits")]
    LongText(usize),
    #[error("not a pickle serde-pickle can decode as data")]
    Malformed,
    #[error("refers to itself")]
    Recursive,
}

/// The limits a pickle must stay within to be decoded.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Containers inside containers, memo references expanded.
    pub depth: u32,
    /// Values allocated while parsing (pushed or cloned), and values of the expanded result.
    pub values: u64,
    /// Bytes of strings, bytes and big integers, counted the same way.
    pub bytes: u64,
}

/// A value on the scanner's stack, as its size: `values` and `bytes` count this value and every
/// value inlined in it; a memo reference inside it is one value here and listed in `refs` with
/// the number of containers around it (its size is known only at the end: a memoized list may
/// still be appended to after it was referenced).
#[derive(Debug, Clone, Default)]
struct Node {
    values: u64,
    bytes: u64,
    /// Container levels of the inlined part (a scalar is 0, `[]` is 1, `[[]]` is 2).
    depth: u32,
    refs: Vec<(u32, u32)>,
}

#[derive(Debug, Clone)]
enum Item {
    Ref(u32),
    Node(Node),
}

impl Node {
    fn scalar(bytes: u64) -> Node {
        Node {
            values: 1,
            bytes,
            depth: 0,
            refs: Vec::new(),
        }
    }

    fn container() -> Node {
        Node {
            values: 1,
            bytes: 0,
            depth: 1,
            refs: Vec::new(),
        }
    }

    /// Put `child` inside this container.
    fn add(&mut self, child: Item, max_depth: u32) -> Result<(), Refused> {
        match child {
            Item::Ref(id) => {
                self.values = self.values.saturating_add(1);
                self.depth = self.depth.max(1);
                self.refs.push((id, 1));
            }
            Item::Node(n) => {
                self.values = self.values.saturating_add(n.values);
                self.bytes = self.bytes.saturating_add(n.bytes);
                self.depth = self.depth.max(n.depth.saturating_add(1));
                self.refs
                    .extend(n.refs.into_iter().map(|(id, l)| (id, l.saturating_add(1))));
            }
        }
        if self.depth > max_depth {
            return Err(Refused::TooDeep(max_depth));
        }
        Ok(())
    }
}

struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    budget: Budget,
    stack: Vec<Item>,
    /// Stack lengths at each open MARK (serde-pickle keeps a separate stack per mark).
    marks: Vec<usize>,
    memo: HashMap<u32, Node>,
    work_values: u64,
    work_bytes: u64,
}

/// Check that what serde-pickle would build from `bytes` stays within `budget`; nothing is
/// decoded here. No recursion; time linear in the input (a memo reference is moved once per
/// container level around it, at most `budget.depth` times), and the scanner's own memory is
/// bounded by the input and the budget.
pub fn check(bytes: &[u8], budget: Budget) -> Result<(), Refused> {
    let mut s = Scanner {
        input: bytes,
        pos: 0,
        budget,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        work_values: 0,
        work_bytes: 0,
    };
    let result = s.run()?;
    if s.pos != s.input.len() {
        // serde-pickle refuses trailing bytes after STOP.
        return Err(Refused::Malformed);
    }
    s.expanded(&result)
}

impl Scanner<'_> {
    fn run(&mut self) -> Result<Item, Refused> {
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

    fn byte(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Refused> {
        let end = self.pos.checked_add(n).ok_or(Refused::Malformed)?;
        let bytes = self.input.get(self.pos..end).ok_or(Refused::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32_le(&mut self) -> Result<u32, Refused> {
        Ok(u32::from_le_bytes(self.array::<4>()?))
    }

    /// A text argument up to the newline (or the end, as serde-pickle reads it).
    fn line(&mut self) -> Result<&[u8], Refused> {
        let rest = self.input.get(self.pos..).ok_or(Refused::Malformed)?;
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        self.take(len)
    }

    fn line_number(&mut self) -> Result<u32, Refused> {
        let line = self.line()?;
        let text = std::str::from_utf8(line).map_err(|_| Refused::Malformed)?;
        text.trim_end_matches(['\n', '\r'])
            .parse()
            .map_err(|_| Refused::Malformed)
    }

    fn scalar_fixed(&mut self, n: usize) -> Result<(), Refused> {
        self.take(n)?;
        self.push_new(Node::scalar(0))
    }

    /// A length-prefixed string, bytes or big integer: the length must be in the input.
    fn scalar_counted(&mut self, n: u64) -> Result<(), Refused> {
        let n_usize = usize::try_from(n).map_err(|_| Refused::Malformed)?;
        self.take(n_usize)?;
        self.push_new(Node::scalar(n))
    }

    fn work(&mut self, values: u64, bytes: u64) -> Result<(), Refused> {
        self.work_values = self.work_values.saturating_add(values);
        self.work_bytes = self.work_bytes.saturating_add(bytes);
        if self.work_values > self.budget.values {
            return Err(Refused::TooManyValues(self.budget.values));
        }
        if self.work_bytes > self.budget.bytes {
            return Err(Refused::TooManyBytes(self.budget.bytes));
        }
        Ok(())
    }

    /// Push a value whose allocation was already counted (or that was moved, not copied).
    fn push(&mut self, item: Item) -> Result<(), Refused> {
        self.stack.push(item);
        Ok(())
    }

    /// Push a new scalar of `bytes` bytes, or a new empty container.
    fn push_new(&mut self, node: Node) -> Result<(), Refused> {
        self.work(1, node.bytes)?;
        self.push(Item::Node(node))
    }

    fn segment_start(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn segment_empty(&self) -> bool {
        self.stack.len() <= self.segment_start()
    }

    /// Pop within the current mark's segment (serde-pickle cannot pop through a mark).
    fn pop(&mut self) -> Result<Item, Refused> {
        if self.segment_empty() {
            return Err(Refused::Malformed);
        }
        self.stack.pop().ok_or(Refused::Malformed)
    }

    fn pop_mark(&mut self) -> Result<Vec<Item>, Refused> {
        let start = self.marks.pop().ok_or(Refused::Malformed)?;
        Ok(self.stack.split_off(start.min(self.stack.len())))
    }

    fn tuple_n(&mut self, n: usize) -> Result<(), Refused> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        let mut node = Node::container();
        for item in items.into_iter().rev() {
            node.add(item, self.budget.depth)?;
        }
        self.work(1, 0)?;
        self.push(Item::Node(node))
    }

    /// The value an item stands for, as a fresh copy if it is a memo reference (serde-pickle
    /// clones the memoized value; that copy is counted as work).
    fn resolve(&mut self, item: Item) -> Result<Node, Refused> {
        match item {
            // Already on the stack: moved, not copied.
            Item::Node(n) => Ok(n),
            Item::Ref(id) => {
                let node = self.memo.get(&id).cloned().ok_or(Refused::Malformed)?;
                self.work(node.values, node.bytes)?;
                Ok(node)
            }
        }
    }

    fn memo_size(&self, id: u32) -> Result<(u64, u64), Refused> {
        self.memo
            .get(&id)
            .map(|n| (n.values, n.bytes))
            .ok_or(Refused::Malformed)
    }

    /// Store the top in the memo and leave a reference in its place.
    fn memoize(&mut self, id: u32) -> Result<(), Refused> {
        let item = self.pop()?;
        let node = self.resolve(item)?;
        self.memo.insert(id, node);
        self.stack.push(Item::Ref(id));
        Ok(())
    }

    fn get(&mut self, id: u32) -> Result<(), Refused> {
        if !self.memo.contains_key(&id) {
            return Err(Refused::Malformed);
        }
        self.work(1, 0)?;
        self.push(Item::Ref(id))
    }

    /// APPEND/SETITEM/... into the container on top (the memoized value itself if the top is a
    /// memo reference: later references see the grown value, which `expanded` accounts for).
    fn modify_top(&mut self, items: Vec<Item>) -> Result<(), Refused> {
        if self.segment_empty() {
            return Err(Refused::Malformed);
        }
        let max_depth = self.budget.depth;
        let target = match self.stack.last_mut() {
            Some(Item::Node(n)) => n,
            Some(Item::Ref(id)) => self.memo.get_mut(id).ok_or(Refused::Malformed)?,
            None => return Err(Refused::Malformed),
        };
        for item in items {
            target.add(item, max_depth)?;
        }
        Ok(())
    }

    /// The size and depth of `result` with every memo reference expanded, as serde-pickle's
    /// conversion would build it: a depth-first walk over the memo graph with an explicit stack
    /// (the graph may be as deep as the input is long), each memo entry measured once.
    fn expanded(&self, result: &Item) -> Result<(), Refused> {
        let root = match result {
            Item::Ref(id) => Node {
                values: 0,
                bytes: 0,
                depth: 0,
                refs: vec![(*id, 0)],
            },
            Item::Node(n) => n.clone(),
        };
        let mut done: HashMap<u32, (u64, u64, u32)> = HashMap::new();
        let mut on_path: std::collections::HashSet<u32> = std::collections::HashSet::new();
        // (memo id, index of the next reference to visit)
        let mut path: Vec<(u32, usize)> = Vec::new();
        for &(start, _) in &root.refs {
            if done.contains_key(&start) {
                continue;
            }
            path.push((start, 0));
            on_path.insert(start);
            while let Some(&(id, next)) = path.last() {
                let node = self.memo.get(&id).ok_or(Refused::Malformed)?;
                if let Some(&(child, _)) = node.refs.get(next) {
                    if let Some(top) = path.last_mut() {
                        top.1 += 1;
                    }
                    if done.contains_key(&child) {
                        continue;
                    }
                    if !on_path.insert(child) {
                        return Err(Refused::Recursive);
                    }
                    path.push((child, 0));
                    continue;
                }
                let size = self.measure(node, &done)?;
                done.insert(id, size);
                on_path.remove(&id);
                path.pop();
            }
        }
        let (values, bytes, _) = self.measure(&root, &done)?;
        if values > self.budget.values {
            return Err(Refused::TooManyValues(self.budget.values));
        }
        if bytes > self.budget.bytes {
            return Err(Refused::TooManyBytes(self.budget.bytes));
        }
        Ok(())
    }

    /// A node's expanded size from its references' (already measured) sizes.
    fn measure(
        &self,
        node: &Node,
        done: &HashMap<u32, (u64, u64, u32)>,
    ) -> Result<(u64, u64, u32), Refused> {
        let (mut values, mut bytes, mut depth) = (node.values, node.bytes, node.depth);
        for (child, level) in &node.refs {
            let &(v, b, d) = done.get(child).ok_or(Refused::Malformed)?;
            values = values.saturating_add(v);
            bytes = bytes.saturating_add(b);
            depth = depth.max(level.saturating_add(d));
        }
        if depth > self.budget.depth {
            return Err(Refused::TooDeep(self.budget.depth));
        }
        Ok((values, bytes, depth))
    }
}
