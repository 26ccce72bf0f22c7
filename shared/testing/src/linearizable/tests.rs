//! The checker against hand-made histories and against simulated histories of a real register.

use super::*;
use RegisterInput::*;
use RegisterOutput::*;

type Op = Operation<RegisterInput, RegisterOutput>;

fn op(client: usize, input: RegisterInput, call: u64, ret: u64, out: RegisterOutput) -> Op {
    Operation {
        client,
        input,
        call,
        answer: Some((ret, out)),
    }
}

fn lost(client: usize, input: RegisterInput, call: u64) -> Op {
    Operation {
        client,
        input,
        call,
        answer: None,
    }
}

fn run(history: &[Op]) -> Result<(), Verdict> {
    check(&VersionedRegister::new(history), (0, 1), history, 100_000_000)
}

#[test]
fn sequential_histories_follow_the_register() {
    assert_eq!(run(&[]), Ok(()));
    let good = [
        op(0, Write(5), 0, 1, Written(2)),
        op(1, Read, 2, 3, Value((5, 2))),
        op(
            0,
            CompareAndSet {
                expected: 2,
                value: 6,
            },
            4,
            5,
            Written(3),
        ),
        op(
            1,
            CompareAndSet {
                expected: 2,
                value: 7,
            },
            6,
            7,
            Conflict,
        ),
        op(1, Read, 8, 9, Value((6, 3))),
    ];
    assert_eq!(run(&good), Ok(()));
    let stale = [
        op(0, Write(5), 0, 1, Written(2)),
        op(1, Read, 2, 3, Value((0, 1))),
    ];
    assert_eq!(run(&stale), Err(Verdict::NotLinearizable { stuck: 1, placed: 1 }));
    let wrong_version = [op(0, Write(5), 0, 1, Written(3))];
    assert!(run(&wrong_version).is_err());
    let conflict_that_was_not = [op(
        0,
        CompareAndSet {
            expected: 1,
            value: 2,
        },
        0,
        1,
        Conflict,
    )];
    assert!(run(&conflict_that_was_not).is_err());
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // The read overlaps the write: it may see the value before or after.
    for seen in [(0, 1), (5, 2)] {
        let h = [op(0, Write(5), 0, 10, Written(2)), op(1, Read, 1, 2, Value(seen))];
        assert_eq!(run(&h), Ok(()), "{seen:?}");
    }
    // Two overlapping writes, then reads that saw them in one order: fine. Reads that saw
    // the later one and then the earlier one again: not.
    let h = [
        op(0, Write(1), 0, 10, Written(2)),
        op(1, Write(2), 0, 10, Written(3)),
        op(2, Read, 11, 12, Value((2, 3))),
    ];
    assert_eq!(run(&h), Ok(()));
    let flip_back = [
        op(0, Write(1), 0, 10, Written(2)),
        op(1, Write(2), 0, 3, Written(3)),
        op(2, Read, 4, 5, Value((2, 3))),
        op(2, Read, 6, 7, Value((1, 2))),
    ];
    assert!(run(&flip_back).is_err());
}

#[test]
fn an_unanswered_write_may_take_effect_later_or_never() {
    let later = [
        lost(0, Write(9), 0),
        op(1, Read, 1, 2, Value((0, 1))),
        op(1, Read, 3, 4, Value((9, 2))),
    ];
    assert_eq!(run(&later), Ok(()));
    let never = [lost(0, Write(9), 0), op(1, Read, 1, 2, Value((0, 1)))];
    assert_eq!(run(&never), Ok(()));
    // But not before it was called.
    let before_its_call = [op(1, Read, 0, 1, Value((9, 2))), lost(0, Write(9), 2)];
    assert!(run(&before_its_call).is_err());
    // And not twice.
    let twice = [
        lost(0, Write(9), 0),
        op(1, Read, 1, 2, Value((9, 2))),
        op(1, Write(3), 3, 4, Written(3)),
        op(1, Read, 5, 6, Value((9, 4))),
    ];
    assert!(run(&twice).is_err());
}

#[test]
fn unanswered_operations_that_differ_later_are_both_tried() {
    // From (0, 1) both lead to (unseen, 2); only the set first leaves the write able to
    // make version 3 afterwards.
    let h = [
        lost(0, Write(100), 0),
        lost(
            1,
            CompareAndSet {
                expected: 1,
                value: 101,
            },
            1,
        ),
        op(2, Write(102), 10, 11, Written(4)),
    ];
    assert_eq!(run(&h), Ok(()));
}

#[test]
fn a_compare_and_set_acknowledged_as_refused_must_not_have_happened() {
    // The lost-answer retry bug: the set took effect, and the client was told "conflict".
    let h = [
        op(
            0,
            CompareAndSet {
                expected: 1,
                value: 4,
            },
            0,
            10,
            Conflict,
        ),
        op(1, Read, 11, 12, Value((4, 2))),
    ];
    assert!(run(&h).is_err());
}

/// A history of `clients` clients on one real atomic register: each operation takes effect
/// at a random instant between its call and its answer; every `lost`-th answer is dropped
/// (and its operation then took effect, or did not, at random).
fn simulated(seed: u64, clients: usize, per_client: usize, lost: usize) -> Vec<Op> {
    let mut rng = seed;
    let mut random = move |below: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % below
    };
    // (instant it takes effect or None, client, input, call, answer time)
    let mut planned = Vec::new();
    for client in 0..clients {
        let mut t = random(10);
        for i in 0..per_client {
            let call = t;
            let effect = call + random(20);
            let answer = effect + random(20);
            let input = match random(3) {
                0 => Read,
                1 => Write((client * per_client + i) as u64 + 100),
                // A guess at the version, right often enough to matter.
                _ => CompareAndSet {
                    expected: 1 + random(3) as i64 + (i as i64 * clients as i64) / 3,
                    value: (client * per_client + i) as u64 + 100,
                },
            };
            let dropped = lost > 0 && random(lost as u64) == 0;
            let takes_effect = !dropped || random(2) == 0;
            planned.push((
                takes_effect.then_some(effect),
                client,
                input,
                call,
                (!dropped).then_some(answer),
            ));
            t = answer + 1 + random(5);
        }
    }
    let mut order: Vec<usize> = (0..planned.len()).filter(|i| planned[*i].0.is_some()).collect();
    order.sort_by_key(|i| planned[*i].0);
    let mut outputs = vec![None; planned.len()];
    let mut state = (0, 1);
    for i in order {
        let out = match &planned[i].2 {
            Read => Value(state),
            Write(v) => {
                state = (*v, state.1 + 1);
                Written(state.1)
            }
            CompareAndSet { expected, value } if *expected == state.1 => {
                state = (*value, state.1 + 1);
                Written(state.1)
            }
            CompareAndSet { .. } => Conflict,
        };
        outputs[i] = Some(out);
    }
    planned
        .into_iter()
        .zip(outputs)
        .filter(|((_, _, input, _, answer), _)| !(answer.is_none() && matches!(input, Read)))
        .map(|((_, client, input, call, answer), out)| Operation {
            client,
            input,
            call,
            answer: answer.map(|t| (t, out.expect("an answered operation took effect"))),
        })
        .collect()
}

#[test]
fn every_history_of_a_real_register_is_accepted() {
    for seed in 0..200 {
        let h = simulated(seed, 5, 80, 5);
        assert_eq!(run(&h), Ok(()), "seed {seed}");
    }
}

#[test]
fn a_history_with_one_answer_changed_is_refused() {
    let mut refused = 0;
    for seed in 0..100 {
        let mut h = simulated(seed, 3, 20, 0);
        // A read that saw a value one version older than it did.
        let Some(i) = h
            .iter()
            .rposition(|o| matches!(o.answer, Some((_, Value((_, v)))) if v > 2))
        else {
            continue;
        };
        let Some((t, Value((_, v)))) = h[i].answer.clone() else {
            unreachable!()
        };
        h[i].answer = Some((t, Value((7777, v))));
        assert!(
            matches!(run(&h), Err(Verdict::NotLinearizable { .. })),
            "seed {seed}"
        );
        refused += 1;
    }
    assert!(refused > 50, "only {refused} histories had a read to change");
}

#[test]
fn many_concurrent_clients_are_searched_without_blowing_up() {
    // 8 clients, each writing its own values in rounds that all overlap; reads at the end of
    // each round see the highest client's write. Linearizable, with 8! orders per round.
    let mut h = Vec::new();
    let mut version = 1;
    for round in 0..50u64 {
        let t = round * 100;
        for c in 0..8u64 {
            h.push(op(
                c as usize,
                Write(round * 10 + c),
                t,
                t + 50,
                Written(version + 1 + c as i64),
            ));
        }
        version += 8;
        h.push(op(8, Read, t + 60, t + 70, Value((round * 10 + 7, version))));
    }
    assert_eq!(run(&h), Ok(()));
    // The same with one answer made impossible is refused, not left undecided.
    let last = h.len() - 1;
    h[last].answer = Some((4970, Value((1, 1))));
    assert!(matches!(run(&h), Err(Verdict::NotLinearizable { .. })));
}
