//! Pickled database results against [`PICKLE_BUDGET`]: real pickles of every protocol decode,
//! hostile ones (deep, memo bombs, malformed) are kept as hex with the reason, never a crash.

use serde_json::Value;

use super::{test_support::*, *};

#[test]
fn real_pickles_of_every_protocol_decode_within_the_budget() {
    let fixture = include_str!("../../../tests/fixtures/pickles.txt");
    let mut lines = fixture.lines().filter(|l| !l.starts_with('#'));
    let want: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let mut n = 0;
    for line in lines {
        let (proto, hex) = line.split_once(' ').unwrap();
        let bytes = hex_bytes(hex);
        assert_eq!(
            pickle::check(&bytes, PICKLE_BUDGET),
            Ok(()),
            "protocol {proto}"
        );
        // Protocols 0 and 1 have no PROTO header (Celery uses 2 and later): not taken for
        // a pickle, but the scanner models them too.
        if bytes[0] == 0x80 {
            assert_eq!(db_result(&bytes), want, "protocol {proto}");
        }
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn shared_values_within_the_budget_decode() {
    // A 1,000-value list referenced 50 times: 50,000 values, under the budget.
    let mut p = vec![0x80, 0x04, b'(', b']', 0x94, b'('];
    for i in 0..1000u16 {
        p.push(b'M');
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b'e');
    p.extend(std::iter::repeat_n([b'h', 0], 49).flatten());
    p.extend_from_slice(b"l.");
    let v = db_result(&p);
    let lists = v.as_array().unwrap();
    assert_eq!(lists.len(), 50);
    assert!(lists.iter().all(|l| l.as_array().unwrap().len() == 1000));
    assert_eq!(lists[49][999], 999);
}

/// A valid pickle (as serde-pickle reads it) built by `choices`: each picks one of the
/// opcodes valid on the current stack — nesting, memo references, copies, marks.
/// One long function on purpose: the table of valid opcodes and the stack model they update
/// must be read (and changed) together, or the generator emits pickles that are not valid.
fn valid_pickle(choices: &[u32], style: u8) -> Vec<u8> {
    #[derive(Clone, Copy, PartialEq)]
    enum K {
        List,
        Dict,
        Other,
        Mark,
    }
    // An outer MARK, closed at the end with every other open one: the result holds all
    // that is left on the stack.
    let mut p = vec![0x80, 0x04, b'('];
    let mut stack: Vec<K> = vec![K::Mark];
    let mut memo: Vec<K> = Vec::new();
    for &c in choices {
        let top = stack.last().copied();
        let value = |k: Option<K>| k.is_some_and(|k| k != K::Mark);
        let below = |n: usize| stack.len().checked_sub(n + 1).map(|i| stack[i]);
        let mark = stack.iter().rposition(|&k| k == K::Mark);
        let mut valid: Vec<(&[u8], u8)> = vec![
            (b"N", 0),
            (b"K\x07", 0),
            (b"\x8c\x01x", 0),
            (b"]", 1),
            (b"}", 2),
            (b")", 0),
            (b"(", 3),
        ];
        if value(top) {
            valid.extend([(&b"\x94"[..], 4), (b"2", 5), (b"\x85", 6), (b"0", 7)]);
            if below(1) == Some(K::List) {
                valid.push((b"a", 8));
            }
            if value(below(1)) {
                valid.push((b"\x86", 9));
                if below(2) == Some(K::Dict) {
                    valid.push((b"s", 10));
                }
            }
        }
        if let Some(m) = mark {
            valid.extend([(&b"l"[..], 11), (b"t", 12)]);
            if m > 0 && stack[m - 1] == K::List {
                valid.push((b"e", 13));
            }
        }
        if !memo.is_empty() {
            valid.push((b"h", 14));
        }
        // Mostly an opcode of the case's style, to reach the limits: nesting (63 times in
        // 64), copying, sharing through the memo, or all of these (3 times in 4).
        let growing: Vec<(&[u8], u8)> = valid
            .iter()
            .copied()
            .filter(|&(_, w)| match style % 4 {
                0 => w == 6,
                1 => matches!(w, 5 | 8),
                2 => matches!(w, 1 | 4 | 8 | 14),
                _ => matches!(w, 1 | 4 | 5 | 6 | 8 | 13 | 14),
            })
            .collect();
        let bias = if style.is_multiple_of(4) {
            c >> 26
        } else {
            c >> 30
        };
        let pool = if bias != 0 && !growing.is_empty() {
            &growing
        } else {
            &valid
        };
        let (op, what) = pool[c as usize % pool.len()];
        p.extend_from_slice(op);
        match what {
            0 => stack.push(K::Other),
            1 => stack.push(K::List),
            2 => stack.push(K::Dict),
            3 => stack.push(K::Mark),
            4 => memo.push(top.unwrap_or(K::Other)),
            5 => stack.push(top.unwrap_or(K::Other)),
            6 => {
                stack.pop();
                stack.push(K::Other);
            }
            7 | 8 => {
                stack.pop();
            }
            9 => {
                stack.truncate(stack.len() - 2);
                stack.push(K::Other);
            }
            10 => {
                stack.truncate(stack.len() - 2);
            }
            11 | 12 => {
                stack.truncate(mark.unwrap_or(0));
                stack.push(if what == 11 { K::List } else { K::Other });
            }
            13 => stack.truncate(mark.unwrap_or(0)),
            _ => {
                let id = (c as usize / 16) % memo.len().min(256);
                p.push(id as u8);
                stack.push(memo[id]);
            }
        }
    }
    let open = stack.iter().filter(|&&k| k == K::Mark).count();
    p.extend(std::iter::repeat_n(b'l', open));
    if open == 0 && stack.is_empty() {
        p.push(b'N');
    }
    p.push(b'.');
    p
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Random valid pickles of nesting, memo references and copies: decoded within the
    /// budget or refused for it, never a crash (a miscounted depth or size would overflow
    /// the stack or exhaust memory here), and never taken for malformed.
    #[test]
    fn random_valid_pickles_are_decoded_or_refused_by_the_budget(
        choices in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..4000),
        style in 0u8..4,
    ) {
        let p = valid_pickle(&choices, style);
        let v = db_result(&p);
        if v.get("encoding").is_some() {
            let reason = v["reason"].as_str().unwrap_or_default();
            proptest::prop_assert!(!reason.contains("not a pickle"), "{reason}");
        }
        proptest::prop_assert!(truncate_result(&v).to_string().len() <= RESULT_MAX_BYTES);
    }
}

fn assert_refused(v: &Value, why: &str) {
    assert_eq!(v["encoding"], "hex", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "{reason}");
    assert!(v["data"].as_str().unwrap().len() <= 2 * HEX_PREVIEW_BYTES);
    assert!(v.to_string().len() <= RESULT_MAX_BYTES);
}

#[test]
fn deeply_nested_pickles_are_hex_not_a_stack_overflow() {
    // 100,000 levels overflowed the stack and aborted the process before the depth limit
    // (serde-pickle converts and drops recursively).
    assert_refused(&db_result(&nested_tuples(100_000)), "nested deeper than 64");
    // The same with lists: EMPTY_LIST x n, APPEND x n.
    let mut p = vec![0x80, 0x04];
    p.extend(std::iter::repeat_n(b']', 100_000));
    p.extend(std::iter::repeat_n(b'a', 99_999));
    p.push(b'.');
    assert_refused(&db_result(&p), "nested deeper than 64");
    // MARK ... LIST nesting; each open MARK also costs serde-pickle 128 slots.
    let mut p = vec![0x80, 0x02];
    p.extend(std::iter::repeat_n(b'(', 100_000));
    p.extend(std::iter::repeat_n(b'l', 100_000));
    p.push(b'.');
    assert_refused(&db_result(&p), "nested deeper than 64");
    // Depth through memo references: each level a 1-tuple of a GET of the previous one.
    let mut p = vec![0x80, 0x04, b']', 0x94];
    for i in 0..1000u32 {
        p.push(b'j');
        p.extend_from_slice(&i.to_le_bytes());
        p.extend_from_slice(&[0x85, 0x94, b'0']);
    }
    p.push(b'j');
    p.extend_from_slice(&1000u32.to_le_bytes());
    p.push(b'.');
    assert_refused(&db_result(&p), "nested deeper than 64");
    // At the limit it decodes.
    let v = db_result(&nested_tuples(63));
    assert!(v.is_array(), "{v}");
}

#[test]
fn memo_bombs_are_refused_before_they_expand() {
    let started = std::time::Instant::now();
    // A 1,000-value list memoized once and referenced 200,000 times (0.4 MB of BINGET):
    // 2 * 10^8 values when expanded.
    let mut p = vec![0x80, 0x04, b']', 0x94, b'('];
    for i in 0..1000u16 {
        p.push(b'M');
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b'e');
    p.push(b'(');
    p.extend(std::iter::repeat_n([b'h', 0], 200_000).flatten());
    p.extend_from_slice(b"l.");
    assert!(p.len() < 500_000);
    assert_refused(&db_result(&p), "expands to more than 100000 values");
    // Ten levels of ten references each to the level below: 10^10 values in ~150 bytes.
    let mut p = vec![0x80, 0x04, b']', 0x94];
    for level in 0..10u8 {
        p.push(b'(');
        p.extend(std::iter::repeat_n([b'h', level], 10).flatten());
        p.extend_from_slice(&[b'l', 0x94]);
    }
    p.push(b'.');
    assert!(p.len() < 300);
    assert_refused(&db_result(&p), "expands to more than 100000 values");
    // A list grown after it was referenced: the references see the grown list.
    let mut p = vec![0x80, 0x04, b']', 0x94, b'('];
    p.extend(std::iter::repeat_n([b'h', 0], 1000).flatten());
    p.push(b'l');
    p.extend_from_slice(&[b'h', 0, b'(']);
    p.extend(std::iter::repeat_n(b'N', 1000));
    p.extend_from_slice(b"e0.");
    assert_refused(&db_result(&p), "expands to more than 100000 values");
    // DUP doubles a list each time without any memo: 2^40 values in 80 bytes.
    let mut p = vec![0x80, 0x04, b']', b'N', b'a'];
    p.extend(std::iter::repeat_n([b'2', b'a'], 40).flatten());
    p.push(b'.');
    assert_refused(&db_result(&p), "more than");
    // A memoized string of 100 KB referenced 200 times: 20 MB of copies.
    let mut p = vec![0x80, 0x04, b'X'];
    p.extend_from_slice(&100_000u32.to_le_bytes());
    p.extend(std::iter::repeat_n(b'x', 100_000));
    p.extend_from_slice(&[0x94, b'0', b'(']);
    p.extend(std::iter::repeat_n([b'h', 0], 200).flatten());
    p.extend_from_slice(b"l.");
    assert_refused(&db_result(&p), "bytes");
    // 100,000 decimal digits would take quadratic time to parse into a big integer.
    let mut p = vec![0x80, 0x02, b'L'];
    p.extend(std::iter::repeat_n(b'9', 100_000));
    p.extend_from_slice(b"L\n.");
    assert_refused(&db_result(&p), "more than 4300 digits");
    // A self-referencing list: refused, not followed forever.
    let p = [0x80, 0x04, b']', 0x94, b'h', 0, b'a', b'.'];
    assert_eq!(db_result(&p)["encoding"], "hex");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn malformed_pickles_are_hex() {
    for p in [
        &b"\x80"[..],
        b"\x80\x04.",
        b"\x80\x04N",
        b"\x80\x04(.",
        b"\x80\x04N1.",
        b"\x80\x04h\x05.",
        b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
        b"\x80\x04T\xff\xff\xff\xff.",
        b"\x80\x04N.trailing",
    ] {
        let v = db_result(p);
        assert_eq!(v["encoding"], "hex", "{p:?}");
    }
    // Long undecodable results keep a preview, not all of it.
    let v = db_result(&vec![0x01; 100_000]);
    assert_eq!(v["bytes"], 100_000);
    assert_eq!(v["truncated"], true);
    assert_eq!(v["data"].as_str().unwrap().len(), 2 * HEX_PREVIEW_BYTES);
}
