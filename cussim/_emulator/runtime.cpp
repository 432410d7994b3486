// runtime.cpp: the scheduler behind cuda_emulator.h. Compiled once into an
// object file and linked into every emulated module (each module has its own
// copy of these globals; Python serialises launches).
//
// One launch runs the grid's blocks one after another. The threads of a block
// are fibers with their own stacks; the scheduler resumes each runnable fiber
// in turn (forward, reverse or shuffled order) until it reaches a
// synchronisation point or finishes, then resolves what can be resolved:
// warp operations whose lanes have all arrived, then the block barrier once
// every live thread waits at it. Nothing resolvable with threads still waiting
// is a deadlock, reported with the line where each thread waits.
//
// Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL) raised by the launching thread and a
// watchdog timer jump back to emu_launch through siglongjmp from a handler on
// an alternate stack; the launch returns an error code and a message.
#include "cuda_emulator.h"

#include <algorithm>
#include <csetjmp>
#include <csignal>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <random>
#include <string>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <vector>

namespace emu {
uint3 g_threadIdx;
uint3 g_blockIdx;
dim3 g_blockDim;
dim3 g_gridDim;
}  // namespace emu

extern "C" const emu::KernelEntry* emu_kernels(int* count);  // defined by the generated module

// ---- fibers ----------------------------------------------------------------
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* new_sp);
extern "C" void emu_fiber_trampoline();
// Saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save_sp and resumes new_sp.
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
)");
#else
#include <ucontext.h>
#endif

namespace {

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };
enum Status { OK = 0, FAULT = 1, ASSERTION = 2, SYNC_ERROR = 3, TRAP = 4, TIMEOUT = 5, STACK_OVERFLOW = 6 };
enum Order { FORWARD = 0, REVERSE = 1, SHUFFLE = 2 };

constexpr size_t kStackBytes = 128 * 1024;
constexpr int kMaxThreads = 1024;

struct Fiber {
    void* sp;
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
    char* guard;  // lowest page of the stack slot, PROT_NONE
    char* top;
    uint3 idx;
    State state;
    // the pending synchronisation
    int kind, arg, width, predicate, reduce;
    unsigned mask;
    unsigned long long value, result;
    const char* file;
    int line;
};

struct Launch {
    const emu::KernelEntry* entry;
    void** args;
    Fiber fibers[kMaxThreads];
    int nthreads;
    Fiber* cur;
    void* sched_sp;
#if !defined(__x86_64__)
    ucontext_t sched_ctx;
#endif
    char* stacks;
    size_t stacks_bytes;
    char* tls_lo;
    size_t tls_bytes;
    char* dyn_map;
    size_t dyn_map_bytes;
    char* dyn_smem;
    size_t dyn_bytes;
    int status;
    std::string message;
};

Launch* L = nullptr;
long g_page = 4096;
unsigned int g_mxcsr_fpucw[2];

std::string coords(uint3 v) {
    return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

std::string where_thread(const Fiber& f) {
    return "thread " + coords(f.idx) + " of block " + coords(emu::g_blockIdx);
}

const char* op_name(int kind) {
    switch (kind) {
        case emu::OP_SYNCWARP: return "__syncwarp";
        case emu::OP_SHFL_IDX: return "__shfl_sync";
        case emu::OP_SHFL_UP: return "__shfl_up_sync";
        case emu::OP_SHFL_DOWN: return "__shfl_down_sync";
        case emu::OP_SHFL_XOR: return "__shfl_xor_sync";
        case emu::OP_BALLOT: return "__ballot_sync";
        case emu::OP_ANY: return "__any_sync";
        default: return "__all_sync";
    }
}

std::string hex(unsigned mask) {
    char text[16];
    std::snprintf(text, sizeof text, "0x%08x", mask);
    return text;
}

std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

std::string waiting_at(const Fiber& f) {
    switch (f.state) {
        case AT_BARRIER: return "waits at __syncthreads (" + site(f.file, f.line) + ")";
        case AT_WARP: return "waits at " + std::string(op_name(f.kind)) + " (" + site(f.file, f.line) + ")";
        case DONE: return "has exited";
        default: return "is runnable";
    }
}

void fiber_main(void* arg) {
    Fiber* f = static_cast<Fiber*>(arg);
    L->entry->invoke(L->entry->fn, L->args);
    f->state = DONE;
#if defined(__x86_64__)
    emu_switch(&f->sp, L->sched_sp);
#else
    swapcontext(&f->ctx, &L->sched_ctx);
#endif
    __builtin_unreachable();
}

#if !defined(__x86_64__)
void fiber_main_ucontext(unsigned lo, unsigned hi) {
    fiber_main(reinterpret_cast<void*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

void start_fiber(Fiber& f) {
#if defined(__x86_64__)
    // Frame that emu_switch pops: mxcsr/fpucw, r15, r14, r13, r12, rbx, rbp, return address.
    uintptr_t* sp = reinterpret_cast<uintptr_t*>(f.top - 80);
    std::memcpy(sp, g_mxcsr_fpucw, 8);
    sp[1] = 0;                                              // r15
    sp[2] = 0;                                              // r14
    sp[3] = reinterpret_cast<uintptr_t>(&fiber_main);       // r13: entry
    sp[4] = reinterpret_cast<uintptr_t>(&f);                // r12: argument
    sp[5] = 0;                                              // rbx
    sp[6] = 0;                                              // rbp
    sp[7] = reinterpret_cast<uintptr_t>(&emu_fiber_trampoline);
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.guard + g_page;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    uintptr_t p = reinterpret_cast<uintptr_t>(&f);
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main_ucontext), 2, (unsigned)p, (unsigned)(p >> 32));
#endif
    f.state = RUNNABLE;
}

void resume(Fiber& f) {
    L->cur = &f;
    emu::g_threadIdx = f.idx;
#if defined(__x86_64__)
    emu_switch(&L->sched_sp, f.sp);
#else
    swapcontext(&L->sched_ctx, &f.ctx);
#endif
    L->cur = nullptr;
}

void yield_to_scheduler() {
    Fiber* f = L->cur;
#if defined(__x86_64__)
    emu_switch(&f->sp, L->sched_sp);
#else
    swapcontext(&f->ctx, &L->sched_ctx);
#endif
}

// A device-side error: the fiber stops for good and the launch fails.
[[noreturn]] void fail(int status, const std::string& message) {
    if (L->status == OK) {
        L->status = status;
        L->message = message;
    }
    L->cur->state = DONE;
    yield_to_scheduler();
    __builtin_unreachable();
}

// Parks the current fiber at a synchronisation point until the scheduler
// releases it, and returns what the scheduler left in f->result.
unsigned long long wait_at(Fiber* f, State state, const char* file, int line) {
    f->state = state;
    f->file = file;
    f->line = line;
    yield_to_scheduler();
    return f->result;
}

bool sync_error(const std::string& message) {
    L->status = SYNC_ERROR;
    L->message = message;
    return false;
}

// ---- warp operations -----------------------------------------------------------
bool is_shuffle(int kind) { return kind >= emu::OP_SHFL_IDX && kind <= emu::OP_SHFL_XOR; }

// Resolves the warp operations of one warp whose lanes have all arrived.
// Returns whether any lane was released; sets L->status on a usage error.
bool resolve_warp(int warp) {
    const int first = warp * 32;
    const int lanes = std::min(32, L->nthreads - first);
    const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    bool released = false;
    for (int l0 = 0; l0 < lanes; ++l0) {
        Fiber& lead = L->fibers[first + l0];
        if (lead.state != AT_WARP) continue;
        const unsigned mask = lead.mask;
        const std::string at = std::string(op_name(lead.kind)) + " (" + site(lead.file, lead.line) + ")";
        if (mask & ~existing)
            return sync_error(where_thread(lead) + ": " + at + " has mask " + hex(mask) +
                ", which names lanes that do not exist (this warp has " + std::to_string(lanes) +
                " threads; make the block size a multiple of 32 or narrow the mask)");
        if (!(mask >> l0 & 1u))
            return sync_error(where_thread(lead) + ": " + at + " is called by a lane that is not in its own mask");
        if (is_shuffle(lead.kind) && (lead.width < 1 || lead.width > 32 || (lead.width & (lead.width - 1))))
            return sync_error(where_thread(lead) + ": " + at + " width " + std::to_string(lead.width) +
                              " is not a power of two from 1 to 32");
        bool ready = true;
        for (int l = 0; l < lanes; ++l) {
            if (!(mask >> l & 1u)) continue;
            Fiber& f = L->fibers[first + l];
            if (f.state == DONE)
                return sync_error(where_thread(lead) + ": " + at + " waits for lane " + std::to_string(l) +
                                  " named in its mask, but " + where_thread(f) + " has exited");
            if (f.state != AT_WARP) { ready = false; continue; }
            if (f.kind != lead.kind || f.mask != mask)
                return sync_error("warp divergence: " + where_thread(lead) + " " + waiting_at(lead) + " with mask " +
                                  hex(mask) + ", while " + where_thread(f) + " " + waiting_at(f) + " with mask " +
                                  hex(f.mask));
        }
        if (!ready) continue;
        unsigned long long vote = 0;
        for (int l = 0; l < lanes; ++l)
            if (mask >> l & 1u) vote |= (unsigned long long)(L->fibers[first + l].value != 0) << l;
        for (int l = 0; l < lanes; ++l) {
            if (!(mask >> l & 1u)) continue;
            Fiber& f = L->fibers[first + l];
            const int w = f.width, seg = l & ~(w - 1);
            int src = l;
            switch (f.kind) {
                case emu::OP_SHFL_IDX: src = seg + (f.arg & (w - 1)); break;
                case emu::OP_SHFL_UP: src = l - f.arg < seg ? l : l - f.arg; break;
                case emu::OP_SHFL_DOWN: src = l + f.arg >= seg + w ? l : l + f.arg; break;
                case emu::OP_SHFL_XOR: src = (l ^ f.arg) >= seg + w ? l : (l ^ f.arg); break;
                default: break;
            }
            if (is_shuffle(f.kind)) {
                if (src < 0 || src >= lanes || !(mask >> src & 1u))
                    return sync_error(where_thread(f) + ": " + std::string(op_name(f.kind)) + " (" +
                                      site(f.file, f.line) + ") reads lane " + std::to_string(src) +
                                      ", which is not in the mask: the value is undefined on a GPU");
                f.result = L->fibers[first + src].value;
            } else if (f.kind == emu::OP_BALLOT) {
                f.result = vote;
            } else if (f.kind == emu::OP_ANY) {
                f.result = vote != 0;
            } else if (f.kind == emu::OP_ALL) {
                f.result = vote == (mask & existing);
            }
        }
        for (int l = 0; l < lanes; ++l)
            if (mask >> l & 1u) L->fibers[first + l].state = RUNNABLE;
        released = true;
    }
    return released;
}

// ---- one block ---------------------------------------------------------------------
bool release_barrier(int live, int exited) {
    if (exited > 0) {
        const Fiber* waiting = nullptr;
        const Fiber* gone = nullptr;
        for (int i = 0; i < L->nthreads; ++i) {
            const Fiber& f = L->fibers[i];
            if (f.state == AT_BARRIER && !waiting) waiting = &f;
            if (f.state == DONE && !gone) gone = &f;
        }
        return sync_error("__syncthreads (" + site(waiting->file, waiting->line) + ") is reached by " +
                          std::to_string(live) + " threads while " + std::to_string(exited) +
                          " threads of the block have exited (" + where_thread(*gone) +
                          " among them): every thread of a block must reach each __syncthreads, "
                          "on a GPU this hangs or gives wrong results");
    }
    int count = 0;
    for (int i = 0; i < L->nthreads; ++i) count += L->fibers[i].predicate != 0;
    for (int i = 0; i < L->nthreads; ++i) {
        Fiber& f = L->fibers[i];
        f.result = f.reduce == 1 ? count : f.reduce == 2 ? count == L->nthreads : f.reduce == 3 ? count > 0 : 0;
        f.state = RUNNABLE;
    }
    return true;
}

bool deadlock() {
    std::string text = "deadlock in block " + coords(emu::g_blockIdx) + ": no thread can proceed;";
    int shown = 0;
    for (int i = 0; i < L->nthreads && shown < 4; ++i) {
        const Fiber& f = L->fibers[i];
        if (f.state == DONE) continue;
        text += std::string(shown ? "," : "") + " thread " + coords(f.idx) + " " + waiting_at(f);
        ++shown;
    }
    for (int i = 0; i < L->nthreads; ++i)
        if (L->fibers[i].state == DONE) {
            text += ", thread " + coords(L->fibers[i].idx) + " has exited";
            break;
        }
    return sync_error(text);
}

bool run_block(int order, std::mt19937_64& rng) {
    std::memset(L->tls_lo, 0xff, L->tls_bytes);  // NaN in every float type
    if (L->dyn_bytes) std::memset(L->dyn_smem, 0xff, L->dyn_bytes);
    std::vector<int> sequence(L->nthreads);
    for (int i = 0; i < L->nthreads; ++i) {
        sequence[i] = order == REVERSE ? L->nthreads - 1 - i : i;
        start_fiber(L->fibers[i]);
    }
    const int warps = (L->nthreads + 31) / 32;
    for (;;) {
        if (order == SHUFFLE) std::shuffle(sequence.begin(), sequence.end(), rng);
        for (int i : sequence) {
            if (L->fibers[i].state != RUNNABLE) continue;
            resume(L->fibers[i]);
            if (L->status != OK) return false;
        }
        bool released = false;
        for (int w = 0; w < warps; ++w) {
            released |= resolve_warp(w);
            if (L->status != OK) return false;
        }
        if (released) continue;
        int live = 0, at_barrier = 0;
        for (int i = 0; i < L->nthreads; ++i) {
            live += L->fibers[i].state != DONE;
            at_barrier += L->fibers[i].state == AT_BARRIER;
        }
        if (live == 0) return true;
        if (at_barrier == live) {
            if (!release_barrier(live, L->nthreads - live)) return false;
            continue;
        }
        return deadlock();
    }
}

// ---- signals -------------------------------------------------------------------------
sigjmp_buf g_jump;
volatile sig_atomic_t g_armed = 0;
pthread_t g_launch_thread;
volatile int g_signal = 0;
void* volatile g_fault_addr = nullptr;
const int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
struct sigaction g_old_actions[4];
struct sigaction g_old_timer_action;
int timer_signal() { return SIGRTMIN + 3; }

void on_signal(int sig, siginfo_t* info, void*) {
    if (!g_armed || !pthread_equal(pthread_self(), g_launch_thread)) {
        // Not ours: put the previous handler back and let the instruction fault again.
        for (int i = 0; i < 4; ++i)
            if (kFaultSignals[i] == sig) sigaction(sig, &g_old_actions[i], nullptr);
        return;
    }
    g_armed = 0;
    g_signal = sig;
    g_fault_addr = info->si_addr;
    siglongjmp(g_jump, 1);
}

std::string describe_signal(int sig, void* addr, int* status) {
    *status = FAULT;
    char where[64];
    std::snprintf(where, sizeof where, "%p", addr);
    std::string who = L->cur ? where_thread(*L->cur) : "block " + coords(emu::g_blockIdx);
    if (sig == timer_signal()) {
        *status = TIMEOUT;
        return "the launch ran past its time limit (" + who +
               " was running): a thread spins on a condition that never changes, or the launch is too large "
               "for the emulator (raise CUSSIM_EMULATOR_TIMEOUT)";
    }
    for (int i = 0; i < L->nthreads; ++i) {
        char* guard = L->fibers[i].guard;
        if ((char*)addr >= guard && (char*)addr < guard + g_page) {
            *status = STACK_OVERFLOW;
            return "stack overflow in " + where_thread(L->fibers[i]) + " (the emulator gives each thread " +
                   std::to_string(kStackBytes / 1024) + " KiB of stack)";
        }
    }
    if (L->dyn_map && (char*)addr >= L->dyn_smem + L->dyn_bytes && (char*)addr < L->dyn_map + L->dyn_map_bytes)
        return "out-of-bounds access to dynamic shared memory by " + who + ": address " + where + " is " +
               std::to_string((char*)addr - L->dyn_smem) + " bytes from its start, past the " +
               std::to_string(L->dyn_bytes) + " bytes passed as shared_mem";
    const char* what = sig == SIGSEGV ? "invalid memory access (SIGSEGV)"
                     : sig == SIGBUS ? "misaligned or invalid memory access (SIGBUS)"
                     : sig == SIGFPE ? "arithmetic fault (SIGFPE, e.g. an integer division by zero)"
                                     : "illegal instruction (SIGILL)";
    return std::string(what) + " at address " + where + " in " + who;
}

// ---- the module's TLS block: its __shared__ variables --------------------------
thread_local char g_tls_anchor;

struct TlsQuery {
    uintptr_t probe;
    char* lo;
    size_t bytes;
};

int find_tls(struct dl_phdr_info* info, size_t, void* data) {
    TlsQuery* q = static_cast<TlsQuery*>(data);
    bool mine = false;
    const ElfW(Phdr)* tls = nullptr;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD && q->probe >= lo && q->probe < lo + ph.p_memsz) mine = true;
        if (ph.p_type == PT_TLS) tls = &ph;
    }
    if (!mine) return 0;
    if (tls) {
        q->lo = static_cast<char*>(info->dlpi_tls_data);
        q->bytes = tls->p_memsz;
    }
    return 1;
}

void locate_tls(char** lo, size_t* bytes) {
    g_tls_anchor = 1;  // makes sure this thread's block is allocated
    TlsQuery q{reinterpret_cast<uintptr_t>(&find_tls), nullptr, 0};
    dl_iterate_phdr(&find_tls, &q);
    if (!q.lo) {  // fall back to the anchor alone
        q.lo = &g_tls_anchor;
        q.bytes = 1;
    }
    *lo = q.lo;
    *bytes = q.bytes;
}

}  // namespace

// ---- entry points used by cuda_emulator.h ------------------------------------------
namespace emu {
int syncthreads(int predicate, int reduce, const char* file, int line) {
    Fiber* f = L->cur;
    f->predicate = predicate;
    f->reduce = reduce;
    return (int)wait_at(f, AT_BARRIER, file, line);
}

unsigned long long warp_op(int kind, unsigned mask, unsigned long long value, int arg, int width, const char* file,
                           int line) {
    Fiber* f = L->cur;
    f->kind = kind;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->width = width;
    return wait_at(f, AT_WARP, file, line);
}

void trap(const char* what, const char* file, int line) {
    fail(TRAP, std::string(what) + " at " + site(file, line) + " in " + where_thread(*L->cur));
}

void* dynamic_shared() { return L->dyn_smem; }

unsigned active_mask() {
    const int lane0 = (int)((L->cur - L->fibers) & ~31);
    unsigned mask = 0;
    for (int l = 0; l < 32 && lane0 + l < L->nthreads; ++l)
        if (L->fibers[lane0 + l].state != DONE) mask |= 1u << l;
    return mask;
}
}  // namespace emu

// Device-side assert: the module links with -Bsymbolic, so its assert() calls bind here.
extern "C" void __assert_fail(const char* assertion, const char* file, unsigned int line,
                              const char* function) noexcept {
    if (!L || !L->cur) std::abort();
    fail(ASSERTION, std::string("device-side assert(") + assertion + ") failed at " + site(file, (int)line) +
                        " in " + function + ", " + where_thread(*L->cur));
}

// ---- the launch -----------------------------------------------------------------
extern "C" int emu_launch(int kernel, const unsigned int* grid, const unsigned int* block, size_t dyn_bytes,
                          void** args, int order, unsigned long long seed, double timeout_s, char* message,
                          size_t message_bytes, void** fault_addr) {
    int count = 0;
    const emu::KernelEntry* table = emu_kernels(&count);
    static Launch launch;  // large (fibers); one launch at a time per module
    L = &launch;
    L->entry = &table[kernel];
    L->args = args;
    L->nthreads = (int)(block[0] * block[1] * block[2]);
    L->cur = nullptr;
    L->status = OK;
    L->message.clear();
    g_page = sysconf(_SC_PAGESIZE);
#if defined(__x86_64__)
    __asm__ volatile("stmxcsr %0" : "=m"(g_mxcsr_fpucw[0]));
    __asm__ volatile("fnstcw %0" : "=m"(g_mxcsr_fpucw[1]));
#endif
    locate_tls(&L->tls_lo, &L->tls_bytes);

    // Stacks: one slot per thread, a PROT_NONE guard page below each.
    const size_t slot = kStackBytes + g_page;
    L->stacks_bytes = slot * L->nthreads;
    L->stacks = static_cast<char*>(
        mmap(nullptr, L->stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    // Dynamic shared memory ends at a guard page, so an overrun faults.
    const size_t dyn_rounded = (dyn_bytes + 15) & ~size_t(15);
    L->dyn_map_bytes = ((dyn_rounded + g_page - 1) / g_page + 1) * g_page;
    L->dyn_map = static_cast<char*>(
        mmap(nullptr, L->dyn_map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (L->stacks == MAP_FAILED || L->dyn_map == MAP_FAILED) {
        std::snprintf(message, message_bytes, "the emulator could not map memory for %d thread stacks", L->nthreads);
        if (L->stacks != MAP_FAILED) munmap(L->stacks, L->stacks_bytes);
        if (L->dyn_map != MAP_FAILED) munmap(L->dyn_map, L->dyn_map_bytes);
        return FAULT;
    }
    mprotect(L->dyn_map + L->dyn_map_bytes - g_page, g_page, PROT_NONE);
    L->dyn_smem = L->dyn_map + L->dyn_map_bytes - g_page - dyn_rounded;
    L->dyn_bytes = dyn_bytes;
    for (int i = 0; i < L->nthreads; ++i) {
        Fiber& f = L->fibers[i];
        f.guard = L->stacks + slot * i;
        f.top = f.guard + slot;
        mprotect(f.guard, g_page, PROT_NONE);
        f.idx = uint3{i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
    }
    emu::g_blockDim = dim3(block[0], block[1], block[2]);
    emu::g_gridDim = dim3(grid[0], grid[1], grid[2]);

    // Signals: handlers on an alternate stack, and a watchdog timer for this thread.
    static char alt_stack[64 * 1024];
    stack_t alt{}, old_alt{};
    alt.ss_sp = alt_stack;
    alt.ss_size = sizeof alt_stack;
    sigaltstack(&alt, &old_alt);
    struct sigaction action{};
    action.sa_sigaction = &on_signal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < 4; ++i) sigaction(kFaultSignals[i], &action, &g_old_actions[i]);
    sigaction(timer_signal(), &action, &g_old_timer_action);
    timer_t timer{};
    bool have_timer = false;
    if (timeout_s > 0) {
        struct sigevent event{};
        event.sigev_notify = SIGEV_THREAD_ID;
        event.sigev_signo = timer_signal();
#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif
        event.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
        have_timer = timer_create(CLOCK_MONOTONIC, &event, &timer) == 0;
        if (have_timer) {
            struct itimerspec spec{};
            spec.it_value.tv_sec = (time_t)timeout_s;
            spec.it_value.tv_nsec = (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
            timer_settime(timer, 0, &spec, nullptr);
        }
    }
    g_launch_thread = pthread_self();
    g_signal = 0;

    if (sigsetjmp(g_jump, 1) == 0) {
        g_armed = 1;
        const unsigned long long gx = grid[0], gy = grid[1], gz = grid[2], blocks = gx * gy * gz;
        std::mt19937_64 rng(seed);
        std::vector<unsigned long long> shuffled;
        if (order == SHUFFLE && blocks <= (1ull << 24)) {
            shuffled.resize(blocks);
            for (unsigned long long b = 0; b < blocks; ++b) shuffled[b] = b;
            std::shuffle(shuffled.begin(), shuffled.end(), rng);
        }
        for (unsigned long long n = 0; n < blocks; ++n) {
            const unsigned long long b = shuffled.empty() ? (order == REVERSE ? blocks - 1 - n : n) : shuffled[n];
            emu::g_blockIdx = uint3{(unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / (gx * gy))};
            if (!run_block(order, rng)) break;
        }
        g_armed = 0;
    } else {
        int status;
        L->message = describe_signal(g_signal, g_fault_addr, &status);
        L->status = status;
    }

    if (have_timer) timer_delete(timer);
    for (int i = 0; i < 4; ++i) sigaction(kFaultSignals[i], &g_old_actions[i], nullptr);
    sigaction(timer_signal(), &g_old_timer_action, nullptr);
    sigaltstack(&old_alt, nullptr);
    munmap(L->stacks, L->stacks_bytes);
    munmap(L->dyn_map, L->dyn_map_bytes);
    if (fault_addr) *fault_addr = g_fault_addr;
    std::snprintf(message, message_bytes, "%s", L->message.c_str());
    L->cur = nullptr;
    return L->status;
}
