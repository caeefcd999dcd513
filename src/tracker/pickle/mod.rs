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
//!
//! [`opcodes`] is the stack machine (one arm per opcode); [`stack`] is the scanner's input,
//! stack, memo and size accounting.

pub mod data;
mod opcodes;
mod stack;

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
