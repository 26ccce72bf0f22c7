//! A linearizability checker for recorded histories, in the style of Wing & Gong's search with
//! Lowe's memoization (the algorithm behind Porcupine and Knossos' `linear`).
//!
//! A history is a set of operations, each with the time its client called it and the time it
//! got its answer. It is linearizable when every operation can be given one instant between
//! its call and its answer such that, taken in that order, the answers are the ones a single
//! copy of the object (the [`Model`]) would give.
//!
//! An operation whose answer never came (the client timed out, the node died) may or may not
//! have taken effect: it is given an answer time of "never" and any answer, so the search may
//! place it anywhere after its call, including after everything else, which is the same as not
//! at all.
//!
//! ```text
//!  events, by time:  call a   call b   ret a   call c   ret b   ret c   (ret x: never)
//!  search:           try the earliest calls first; a return reached before its call was
//!                    placed means backtrack; (placed set, state) pairs already seen are skipped
//! ```

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// The sequential object a history is checked against.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    /// The state an operation leaves, if `input` may answer `output` in `state`. `output` is
    /// `None` for an operation whose answer never came: any answer goes.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether two inputs do the same from every state. Of unanswered operations that do, the
    /// search tries one where it could place either; by default no two inputs do.
    fn interchangeable(&self, _a: &Self::Input, _b: &Self::Input) -> bool {
        false
    }
}

/// One operation of a history. Times are in any one monotonic unit (nanoseconds since the run
/// began, say).
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    pub client: usize,
    pub input: I,
    pub call: u64,
    /// `None` when the answer never came.
    pub answer: Option<(u64, O)>,
}

/// Why a history is not known to be linearizable.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No order fits. `stuck` is the operation (by index) that could be placed nowhere, after
    /// the longest prefix the search managed; `placed` is that prefix's length.
    NotLinearizable { stuck: usize, placed: usize },
    /// The search gave up after `explored` steps without an answer either way.
    Undecided { explored: u64 },
}

/// Where the search stands at a node of its tree: scanning the answered operations' events
/// (from a list entry), or, once that scan met a return it could not pass, the unanswered
/// operations called before that return (from an index into them; the return's time).
#[derive(Clone, Copy)]
enum Cursor {
    Answered(usize),
    Unanswered(usize, u64),
}

/// Checks `history` against `model` from `initial`, giving up after `budget` steps (a step
/// tries one operation or passes one event; a few hundred million take seconds).
///
/// Answered operations are tried first: one whose answer never came most often never took
/// effect, and trying those only where nothing answered fits keeps their many pending
/// possibilities out of the common path.
pub fn check<M: Model>(
    model: &M,
    initial: M::State,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Result<(), Verdict> {
    // The answered operations' events, sorted by time; at equal times calls first, which lets
    // more operations overlap (the generous reading of a tie).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
    for (op, o) in history.iter().enumerate() {
        if let Some((answered, _)) = &o.answer {
            events.push((o.call, false, op));
            events.push((*answered, true, op));
        }
    }
    events.sort_unstable();
    let mut unanswered: Vec<usize> = (0..history.len())
        .filter(|op| history[*op].answer.is_none())
        .collect();
    unanswered.sort_by_key(|op| history[*op].call);
    let n = events.len();
    // A doubly linked list over the events, with node n as the head.
    let end = usize::MAX;
    let mut next: Vec<usize> = (1..n).chain([end, end]).collect();
    if n > 0 {
        next[n] = 0;
    }
    let mut prev: Vec<usize> = [n].into_iter().chain(0..n).collect();
    let mut return_of = vec![0usize; history.len()];
    for (i, (_, is_return, op)) in events.iter().enumerate() {
        if *is_return {
            return_of[*op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != end {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != end {
            prev[nx] = i;
        }
    };

    let words = history.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    // Each placed operation: where it was found, and the state before it.
    let mut stack: Vec<(usize, Cursor, M::State)> = Vec::new();
    // Per depth of the stack, the unanswered operations tried from there, with the state each
    // led to: another that does the same from every state (and so would lead there too) is
    // not tried again, since neither has an answer to honour.
    let mut tried: Vec<Vec<(M::State, usize)>> = vec![Vec::new(); history.len() + 1];
    let mut state = initial;
    let mut cursor = Cursor::Answered(next[n]);
    let mut explored = 0u64;
    // The deepest prefix placed, and the operation whose answer came before it could be.
    let mut deepest = (0usize, 0usize);
    loop {
        explored += 1;
        if explored > budget {
            return Err(Verdict::Undecided { explored });
        }
        // The operation to try here, or the return that ends this scan.
        let (op, backtrack) = match cursor {
            Cursor::Answered(entry) => {
                if entry == end {
                    // Every answered operation is placed; the rest may never have happened.
                    return Ok(());
                }
                let (at, is_return, op) = events[entry];
                if is_return {
                    // Nothing answered fits here: try the unanswered ones called by now.
                    cursor = Cursor::Unanswered(0, at);
                    if stack.len() >= deepest.0 {
                        deepest = (stack.len(), op);
                    }
                    continue;
                }
                (op, false)
            }
            Cursor::Unanswered(i, before) => match unanswered.get(i) {
                Some(op) if history[*op].call <= before => (*op, false),
                _ => (0, true),
            },
        };
        if backtrack {
            let Some((op, found_at, before)) = stack.pop() else {
                return Err(Verdict::NotLinearizable {
                    stuck: deepest.1,
                    placed: deepest.0,
                });
            };
            placed[op / 64] &= !(1 << (op % 64));
            state = before;
            cursor = match found_at {
                Cursor::Answered(call) => {
                    relink(&mut next, &mut prev, return_of[op]);
                    relink(&mut next, &mut prev, call);
                    Cursor::Answered(next[call])
                }
                Cursor::Unanswered(i, at) => Cursor::Unanswered(i + 1, at),
            };
            continue;
        }
        let advance = |cursor: Cursor| match cursor {
            Cursor::Answered(entry) => Cursor::Answered(next[entry]),
            Cursor::Unanswered(i, at) => Cursor::Unanswered(i + 1, at),
        };
        if placed[op / 64] & (1 << (op % 64)) != 0 {
            cursor = advance(cursor);
            continue;
        }
        let o = &history[op];
        let output = o.answer.as_ref().map(|(_, out)| out);
        let step = model.step(&state, &o.input, output).filter(|after| {
            output.is_some() || {
                // An unanswered operation that changes nothing here is as good as one that
                // never happened, which the end of the search allows anyway.
                let tried = &mut tried[stack.len()];
                *after != state
                    && !tried.iter().any(|(s, other)| {
                        s == after && model.interchangeable(&history[*other].input, &o.input)
                    })
                    && {
                        tried.push((after.clone(), op));
                        true
                    }
            }
        });
        if let Some(after) = step {
            placed[op / 64] |= 1 << (op % 64);
            if seen.insert((placed.clone(), after.clone())) {
                stack.push((op, cursor, std::mem::replace(&mut state, after)));
                tried[stack.len()].clear();
                if let Cursor::Answered(call) = cursor {
                    unlink(&mut next, &mut prev, call);
                    unlink(&mut next, &mut prev, return_of[op]);
                }
                cursor = Cursor::Answered(next[n]);
                continue;
            }
            placed[op / 64] &= !(1 << (op % 64));
        }
        cursor = advance(cursor);
    }
}

/// A versioned register, as the REST API keeps one resource: a value and the version the store
/// gives it (1 on creation, one more per change). Writes carry values never written before,
/// so every write changes the resource.
///
/// A value no read saw is held as [`UNSEEN`]: which of several such writes took effect cannot
/// matter, and saying so lets the search try one of them instead of each.
pub struct VersionedRegister {
    seen: HashSet<u64>,
}

/// What the register holds after a write whose value no read saw.
pub const UNSEEN: u64 = u64::MAX;

impl VersionedRegister {
    /// The register for checking `history`, none of whose writes may write [`UNSEEN`].
    pub fn new(history: &[Operation<RegisterInput, RegisterOutput>]) -> Self {
        assert!(
            !history.iter().any(|o| matches!(
                o.input,
                RegisterInput::Write(UNSEEN) | RegisterInput::CompareAndSet { value: UNSEEN, .. }
            )),
            "{UNSEEN} stands for values no read saw: a history may not write it"
        );
        let seen = history
            .iter()
            .filter_map(|o| match &o.answer {
                Some((_, RegisterOutput::Value((value, _)))) => Some(*value),
                _ => None,
            })
            .collect();
        Self { seen }
    }

    fn held(&self, value: u64) -> u64 {
        if self.seen.contains(&value) { value } else { UNSEEN }
    }

    /// An input as it acts on the register: which values, as held.
    fn effect(&self, input: &RegisterInput) -> (u8, u64, i64) {
        match input {
            RegisterInput::Read => (0, 0, 0),
            RegisterInput::Write(v) => (1, self.held(*v), 0),
            RegisterInput::CompareAndSet { expected, value } => (2, self.held(*value), *expected),
        }
    }
}

/// What a register holds: `(value, version)`.
pub type Versioned = (u64, i64);

#[derive(Clone, Debug)]
pub enum RegisterInput {
    Read,
    Write(u64),
    /// Write the value only if the stored version is `expected`.
    CompareAndSet {
        expected: i64,
        value: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    /// Read: what the register held.
    Value(Versioned),
    /// Written; the resource's new version.
    Written(i64),
    /// Refused: the version was not the expected one.
    Conflict,
}

impl Model for VersionedRegister {
    type State = Versioned;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn interchangeable(&self, a: &RegisterInput, b: &RegisterInput) -> bool {
        self.effect(a) == self.effect(b)
    }

    fn step(
        &self,
        &(value, version): &Versioned,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Versioned> {
        use RegisterOutput::*;
        let written = |new: u64| match output {
            None => Some((self.held(new), version + 1)),
            Some(Written(v)) if *v == version + 1 => Some((self.held(new), version + 1)),
            Some(_) => None,
        };
        match input {
            RegisterInput::Read => match output {
                None => Some((value, version)),
                Some(Value(seen)) if *seen == (value, version) => Some((value, version)),
                Some(_) => None,
            },
            RegisterInput::Write(new) => written(*new),
            RegisterInput::CompareAndSet { expected, value: new } if *expected == version => written(*new),
            RegisterInput::CompareAndSet { .. } => match output {
                None | Some(Conflict) => Some((value, version)),
                Some(_) => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
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
}
