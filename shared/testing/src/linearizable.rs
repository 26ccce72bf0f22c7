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
mod tests;
