/* layout_dump.c - print the sizes and offsets the C compiler gives napalloc.h's types, one per
 * line ("SIZE T n" / "OFFSET T.field n"). tests/c_abi.rs compares them with the Rust mirror in
 * src/nap/types.rs, so the two can only drift apart together with a failing test. */
#include "napalloc.h"

#include <stddef.h>
#include <stdio.h>

#define SIZE(T) printf("SIZE %s %lu\n", #T, (unsigned long)sizeof(T))
#define OFFSET(T, f) printf("OFFSET %s.%s %lu\n", #T, #f, (unsigned long)offsetof(T, f))

int main(void) {
    SIZE(GUID);
    OFFSET(GUID, Data2);
    OFFSET(GUID, Data3);
    OFFSET(GUID, Data4);
    SIZE(FILETIME);
    OFFSET(FILETIME, dwHighDateTime);
    SIZE(FixupState);
    SIZE(SoHAttributeType);
    SIZE(EMemoryCriticalLevel);

    SIZE(Connections);
    OFFSET(Connections, count);
    OFFSET(Connections, connections);
    SIZE(CountedString);
    OFFSET(CountedString, string);
    SIZE(ResultCodes);
    OFFSET(ResultCodes, results);
    SIZE(FixupInfo);
    OFFSET(FixupInfo, state);
    OFFSET(FixupInfo, percentage);
    OFFSET(FixupInfo, resultCodes);
    OFFSET(FixupInfo, fixupMsgId);
    SIZE(SystemHealthAgentState);
    OFFSET(SystemHealthAgentState, id);
    OFFSET(SystemHealthAgentState, shaResultCodes);
    OFFSET(SystemHealthAgentState, failureCategory);
    OFFSET(SystemHealthAgentState, fixupInfo);
    SIZE(SoHAttribute);
    OFFSET(SoHAttribute, type);
    OFFSET(SoHAttribute, size);
    OFFSET(SoHAttribute, value);
    SIZE(SoH);
    OFFSET(SoH, attributes);
    SIZE(NetworkSoH);
    OFFSET(NetworkSoH, data);
    SIZE(PrivateData);
    OFFSET(PrivateData, data);
    SIZE(IsolationInfo);
    OFFSET(IsolationInfo, probEndTime);
    OFFSET(IsolationInfo, failureUrl);
    SIZE(IsolationInfoEx);
    OFFSET(IsolationInfoEx, extendedIsolationState);
    OFFSET(IsolationInfoEx, probEndTime);
    OFFSET(IsolationInfoEx, failureUrl);
    SIZE(NapComponentRegistrationInfo);
    OFFSET(NapComponentRegistrationInfo, friendlyName);
    OFFSET(NapComponentRegistrationInfo, description);
    OFFSET(NapComponentRegistrationInfo, version);
    OFFSET(NapComponentRegistrationInfo, vendorName);
    OFFSET(NapComponentRegistrationInfo, infoClsid);
    OFFSET(NapComponentRegistrationInfo, configClsid);
    OFFSET(NapComponentRegistrationInfo, registrationDate);
    OFFSET(NapComponentRegistrationInfo, componentType);
    SIZE(FailureCategoryMapping);
    SIZE(CorrelationId);
    OFFSET(CorrelationId, timeStamp);
    SIZE(Ipv4Address);
    SIZE(Ipv6Address);
    SIZE(SoHAttributeValue);
    OFFSET(SoHAttributeValue, v4AddressesVal.addresses);
    OFFSET(SoHAttributeValue, v6AddressesVal.addresses);
    OFFSET(SoHAttributeValue, codesVal.results);
    OFFSET(SoHAttributeValue, vendorSpecificVal.size);
    OFFSET(SoHAttributeValue, vendorSpecificVal.vendorSpecificData);
    OFFSET(SoHAttributeValue, octetStringVal.data);

    SIZE(IUnknownVtbl);
    SIZE(IMallocVtbl);
    OFFSET(IMallocVtbl, Alloc);
    OFFSET(IMallocVtbl, Realloc);
    OFFSET(IMallocVtbl, Free);
    OFFSET(IMallocVtbl, GetSize);
    OFFSET(IMallocVtbl, DidAlloc);
    OFFSET(IMallocVtbl, HeapMinimize);
    SIZE(ICLRMemoryNotificationCallbackVtbl);
    OFFSET(ICLRMemoryNotificationCallbackVtbl, OnMemoryNotification);
    SIZE(IHostMallocVtbl);
    OFFSET(IHostMallocVtbl, Alloc);
    OFFSET(IHostMallocVtbl, DebugAlloc);
    OFFSET(IHostMallocVtbl, Free);
    SIZE(IHostMemoryManagerVtbl);
    OFFSET(IHostMemoryManagerVtbl, CreateMalloc);
    OFFSET(IHostMemoryManagerVtbl, VirtualAlloc);
    OFFSET(IHostMemoryManagerVtbl, VirtualFree);
    OFFSET(IHostMemoryManagerVtbl, VirtualQuery);
    OFFSET(IHostMemoryManagerVtbl, VirtualProtect);
    OFFSET(IHostMemoryManagerVtbl, GetMemoryLoad);
    OFFSET(IHostMemoryManagerVtbl, RegisterMemoryNotificationCallback);
    OFFSET(IHostMemoryManagerVtbl, NeedsVirtualAddressSpace);
    OFFSET(IHostMemoryManagerVtbl, AcquiredVirtualAddressSpace);
    OFFSET(IHostMemoryManagerVtbl, ReleasedVirtualAddressSpace);

    SIZE(NapallocStats);
    OFFSET(NapallocStats, live_blocks);
    OFFSET(NapallocStats, live_bytes);
    OFFSET(NapallocStats, committed_bytes);
    OFFSET(NapallocStats, reserved_bytes);
    OFFSET(NapallocStats, bad_pointer_reports);
    OFFSET(NapallocStats, failed_allocations);
    OFFSET(NapallocStats, trims);
    return 0;
}
