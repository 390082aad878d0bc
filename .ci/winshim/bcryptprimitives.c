/*
 * bcryptprimitives.dll for Wine versions that lack it (Wine 8 and older).
 *
 * Rust's standard library for x86_64-pc-windows-gnu takes its random bytes (HashMap seeds) from
 * ProcessPrng in bcryptprimitives.dll, so a test binary cannot even start without this DLL.
 * ProcessPrng is implemented with advapi32's SystemFunction036 (RtlGenRandom), which every
 * Wine version provides. The DLL is only used to run the test suite under Wine; it is never
 * shipped.
 *
 * BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData): fills the buffer with random bytes and,
 * as documented, returns TRUE (FALSE here only if RtlGenRandom itself fails).
 */
#include <windows.h>

/* ntsecapi.h names this RtlGenRandom through a macro; declare the real export directly. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a 32-bit length: fill larger buffers in pieces. */
    while (len > 0) {
        ULONG n = len > 0x40000000u ? 0x40000000u : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
