//! The scanner's input, stack, marks and memo, and the accounting that keeps what
//! serde-pickle would build within the budget.

use std::collections::HashMap;

use super::{Item, Node, Refused, Scanner};

impl Scanner<'_> {
    pub(super) fn byte(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&[u8], Refused> {
        let end = self.pos.checked_add(n).ok_or(Refused::Malformed)?;
        let bytes = self.input.get(self.pos..end).ok_or(Refused::Malformed)?;
        self.pos = end;
        Ok(bytes)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u32_le(&mut self) -> Result<u32, Refused> {
        Ok(u32::from_le_bytes(self.array::<4>()?))
    }

    /// A text argument up to the newline (or the end, as serde-pickle reads it).
    pub(super) fn line(&mut self) -> Result<&[u8], Refused> {
        let rest = self.input.get(self.pos..).ok_or(Refused::Malformed)?;
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        self.take(len)
    }

    pub(super) fn line_number(&mut self) -> Result<u32, Refused> {
        let line = self.line()?;
        let text = std::str::from_utf8(line).map_err(|_| Refused::Malformed)?;
        text.trim_end_matches(['\n', '\r'])
            .parse()
            .map_err(|_| Refused::Malformed)
    }

    pub(super) fn scalar_fixed(&mut self, n: usize) -> Result<(), Refused> {
        self.take(n)?;
        self.push_new(Node::scalar(0))
    }

    /// A length-prefixed string, bytes or big integer: the length must be in the input.
    pub(super) fn scalar_counted(&mut self, n: u64) -> Result<(), Refused> {
        let n_usize = usize::try_from(n).map_err(|_| Refused::Malformed)?;
        self.take(n_usize)?;
        self.push_new(Node::scalar(n))
    }

    pub(super) fn work(&mut self, values: u64, bytes: u64) -> Result<(), Refused> {
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
    pub(super) fn push(&mut self, item: Item) -> Result<(), Refused> {
        self.stack.push(item);
        Ok(())
    }

    /// Push a new scalar of `bytes` bytes, or a new empty container.
    pub(super) fn push_new(&mut self, node: Node) -> Result<(), Refused> {
        self.work(1, node.bytes)?;
        self.push(Item::Node(node))
    }

    pub(super) fn segment_start(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn segment_empty(&self) -> bool {
        self.stack.len() <= self.segment_start()
    }

    /// Pop within the current mark's segment (serde-pickle cannot pop through a mark).
    pub(super) fn pop(&mut self) -> Result<Item, Refused> {
        if self.segment_empty() {
            return Err(Refused::Malformed);
        }
        self.stack.pop().ok_or(Refused::Malformed)
    }

    pub(super) fn pop_mark(&mut self) -> Result<Vec<Item>, Refused> {
        let start = self.marks.pop().ok_or(Refused::Malformed)?;
        Ok(self.stack.split_off(start.min(self.stack.len())))
    }

    pub(super) fn tuple_n(&mut self, n: usize) -> Result<(), Refused> {
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
    pub(super) fn resolve(&mut self, item: Item) -> Result<Node, Refused> {
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

    pub(super) fn memo_size(&self, id: u32) -> Result<(u64, u64), Refused> {
        self.memo
            .get(&id)
            .map(|n| (n.values, n.bytes))
            .ok_or(Refused::Malformed)
    }

    /// Store the top in the memo and leave a reference in its place.
    pub(super) fn memoize(&mut self, id: u32) -> Result<(), Refused> {
        let item = self.pop()?;
        let node = self.resolve(item)?;
        self.memo.insert(id, node);
        self.stack.push(Item::Ref(id));
        Ok(())
    }

    pub(super) fn get(&mut self, id: u32) -> Result<(), Refused> {
        if !self.memo.contains_key(&id) {
            return Err(Refused::Malformed);
        }
        self.work(1, 0)?;
        self.push(Item::Ref(id))
    }

    /// APPEND/SETITEM/... into the container on top (the memoized value itself if the top is a
    /// memo reference: later references see the grown value, which `expanded` accounts for).
    pub(super) fn modify_top(&mut self, items: Vec<Item>) -> Result<(), Refused> {
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
    pub(super) fn expanded(&self, result: &Item) -> Result<(), Refused> {
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
    pub(super) fn measure(
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
